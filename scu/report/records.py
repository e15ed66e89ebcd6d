"""Files a run leaves behind, written so that an interruption never leaves a broken one.

Every JSON file (and every plot and weight file scu writes) is written to a temporary name and
renamed into place; metrics.jsonl is appended line by line and flushed, and truncated back to the
checkpoint on resume. A corrupt JSON file is read back as a one-line error that names it.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from scu import ScuError

PACKAGES = ["scu", "torch", "transformers", "peft", "accelerate", "trl", "datasets", "mlx", "mlx-lm"]


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file (ours, or one another library wrote) to disk, before it is renamed into place."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def umask_mode(directory: bool = False) -> int:
    """The mode open() or mkdir() would give a new file or folder under this process's umask: mkstemp and
    mkdtemp give 0600 and 0700, which would leave written files unreadable to the group a plain save allows."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def staging_dir(parent: str | Path, prefix: str) -> Path:
    """A new folder in `parent` to fill and then rename into place, with a plain mkdir's permissions."""
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    os.chmod(tmp, umask_mode(directory=True))
    return tmp


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A temporary file next to `path` for the block to write; synced and renamed onto `path` only when the
    block succeeds. `suffix` ends the temporary name, for writers that add an extension otherwise.

    A crash or an error mid-write leaves the previous file (or none), never a partial one. The file keeps the
    mode of the one it replaces, or gets a plain open()'s.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        fsync_file(tmp)
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode) if path.exists() else umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_json(path: str | Path) -> Any:
    """The parsed file, None when it does not exist; a corrupt file is a one-line error that names it."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ScuError(f"{path} is not valid JSON ({first_line(e)}); restore it or write it again") from None


def check_safetensors(path: str | Path) -> None:
    """Read the file's header, which also checks the file's size against it: a truncated copy is caught here."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy"):
            pass
    except SafetensorError as e:
        raise ScuError(f"{path} is truncated or corrupt ({first_line(e)}); re-download or re-save it") from None


def first_line(e: Exception) -> str:
    """An exception's message cut to one short line, for a one-line error."""
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__


def _json_safe(obj: Any) -> Any:
    """NaN and inf are not JSON; write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(_json_safe(obj), indent=2) + "\n")


def package_versions(names: list[str] = PACKAGES) -> dict[str, str | None]:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


class MetricsLog:
    """metrics.jsonl: one JSON object per optimizer step."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, row: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(_json_safe(row)) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash: everything before it is intact
                break
        return rows

    def truncate_after(self, step: int) -> list[dict[str, Any]]:
        """Keep rows with row['step'] <= step (resume from a checkpoint at `step`); return them."""
        rows = [r for r in self.read() if r["step"] <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))
        return rows
