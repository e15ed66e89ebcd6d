"""User-side registry of model families with their own S*, Kp and Ki (the guide's "Adding to Smart Config").

A family is registered from Python with `scu.config.register_scale(...)` or from a YAML file
(`scu suggest --scales FILE`, or the file named by $SCU_SCALES, else ~/.config/scu/scales.yaml):

    my-model:
      s_target: 0.03        # S* as a fraction (3%)
      kp: 0.8               # optional; default: the engine's measured Kp
      ki: 0.15              # optional; default: the engine's measured Ki
      match: ["my-org/my-model-*"]   # optional globs on the hub id, directory name or model_type

Nobody edits package sources to add a family. A family's S* replaces the size category's S*;
the dataset and task adjustments still apply on top (they describe the data, not the model).
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from scu import ScuError


class Scale(BaseModel):
    """One named model family: its S* and, optionally, its PI gains."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    s_target: float = Field(gt=0.0, lt=1.0)
    kp: float | None = Field(default=None, gt=0.0)
    ki: float | None = Field(default=None, ge=0.0)
    match: tuple[str, ...] = ()

    def patterns(self) -> tuple[str, ...]:
        """Globs that select this family; by default any model whose name contains the family name."""
        return self.match or (f"*{self.name}*",)

    def matches(self, model_name: str, model_type: str | None) -> bool:
        """Against a hub id, a local directory's own name (not its parents), or the config's model_type."""
        names = {(Path(model_name).name if Path(model_name).exists() else model_name).lower()}
        if model_type:
            names.add(model_type.lower())
        return any(fnmatch.fnmatchcase(n, p.lower()) for p in self.patterns() for n in names)


_SCALES: dict[str, Scale] = {}


def _make(name: str, fields: dict[str, Any], where: str) -> Scale:
    try:
        return Scale.model_validate({"name": name, **fields})
    except ValidationError as e:
        what = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or name}: {err['msg']}" for err in e.errors())
        raise ScuError(f"invalid model family {name!r} in {where} ({what}); "
                       "give s_target in (0, 1), optional kp > 0, ki >= 0, match: [globs]") from None


def register_scale(
    name: str, s_target: float, kp: float | None = None, ki: float | None = None, match: list[str] | tuple[str, ...] = ()
) -> Scale:
    """Add (or replace) a named model family for this process; `scu.config.suggest` then uses it."""
    scale = _make(name, {"s_target": s_target, "kp": kp, "ki": ki, "match": tuple(match)}, "register_scale()")
    _SCALES[name] = scale
    return scale


def default_scales_file() -> Path:
    return Path(os.environ.get("SCU_SCALES", Path.home() / ".config" / "scu" / "scales.yaml"))


def load_scales(path: str | Path) -> list[Scale]:
    """Read a YAML file of families (name -> {s_target, kp, ki, match}); it does not register them."""
    p = Path(path)
    if not p.is_file():
        raise ScuError(f"scales file not found: {p}; pass an existing YAML file to --scales")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ScuError(f"{p} is not valid YAML ({str(e).splitlines()[0]}); fix the syntax") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ScuError(f"{p} must map family names to {{s_target, kp, ki, match}}, e.g. 'my-model: {{s_target: 0.03}}'")
    return [_make(str(name), fields, str(p)) for name, fields in data.items()]


def known_scales(scales_file: str | Path | None = None) -> dict[str, Scale]:
    """Families from the scales file (explicit, else the default file if it exists), then register_scale() ones."""
    path = Path(scales_file) if scales_file is not None else default_scales_file()
    from_file = load_scales(path) if scales_file is not None or path.is_file() else []
    return {**{s.name: s for s in from_file}, **_SCALES}


def find_scale(
    model_name: str | None, model_type: str | None, family: str | None = None, scales_file: str | Path | None = None
) -> Scale | None:
    """The family named `family`, else the one family whose patterns match the model; None when none does."""
    scales = known_scales(scales_file)
    if family is not None:
        if family not in scales:
            known = ", ".join(sorted(scales)) or "none registered"
            raise ScuError(f"unknown model family {family!r} (known: {known}); register it or drop --family")
        return scales[family]
    if model_name is None:
        return None
    hits = [s for s in scales.values() if s.matches(model_name, model_type)]
    if len(hits) > 1:
        names = ", ".join(s.name for s in hits)
        raise ScuError(f"{model_name} matches several model families ({names}); choose one with --family")
    return hits[0] if hits else None
