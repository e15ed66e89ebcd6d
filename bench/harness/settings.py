"""KEY=VALUE settings from a benchmark's command line (--set, --equilibrium): one parser for all of them."""

from __future__ import annotations

import hashlib
from typing import Any

import yaml
from pydantic import ValidationError

from scu.config.schema import ScuSection


def parse_value(text: str) -> Any:
    """An int or a float when the text is one (YAML would read 1e-3 as a string), else YAML's reading (true, ratio)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def key_values(items: list[str]) -> dict[str, Any]:
    """{"window": 50, "lambda_tolerance": 0.2} from ["window=50", "lambda_tolerance=0.2"]."""
    pairs = [item.split("=", 1) for item in items if item]
    bad = [item for item, pair in zip(items, pairs) if len(pair) != 2]
    if bad:
        raise SystemExit(f"expected KEY=VALUE, got {bad[0]!r}")
    return {key: parse_value(value) for key, value in pairs}


# the longest label the benches have written (the default set, 196): with a job's name around it and the ".json",
# a file name stays within 245 bytes, and atomic writes add 10 for their temporary name (255 is the limit)
LABEL_MAX = 196


def settings_label(items: list[str]) -> str:
    """The settings as a file-name suffix: "_window=50_lambda_tolerance=0.2" ("" for none). One longer than LABEL_MAX
    keeps its first characters and ends in a hash of the whole, so different settings never share a file."""
    label = "".join(f"_{item}" for item in items if item)
    if len(label) <= LABEL_MAX:
        return label
    digest = hashlib.sha256(label.encode()).hexdigest()[:12]
    return f"{label[:LABEL_MAX - len(digest) - 1]}_{digest}"


def scu_settings(items: list[str]) -> dict[str, Any]:
    """--set KEY=VALUE ... as scu settings, checked against the schema before any work starts (a bad one names itself)."""
    scu = key_values(items)
    try:
        ScuSection.model_validate({"enabled": True, **scu})
    except ValidationError as err:
        first = err.errors()[0]
        raise SystemExit(f"--set: {'.'.join(map(str, first['loc'])) or 'scu'}: {first['msg']}") from None
    return scu
