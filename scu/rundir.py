"""The run directory: checked before anything loads, then held by one run at a time.

`check_output` refuses, before a model is loaded, an --output the run could not use or would
silently clobber (a file, an unwritable place, someone else's files, a finished run).
`claim` then takes an exclusive `flock` on a lock file inside it for the life of the run, so a
second `scu train` on the same directory fails at once instead of interleaving its records.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from scu import ScuError
from scu.report.records import fsync_file

LOCK_FILE = ".scu.lock"
# Files that mark a directory as holding a run (both backends), and the records --overwrite removes first.
RUN_MARKERS = ("checkpoint.pt", "checkpoint.mlx.safetensors", "metadata.json")
RUN_RECORDS = (*RUN_MARKERS, "metrics.jsonl")
PLAIN_FIT = "plain_fit"  # the plain fit `prior_sigma: fit` trains first, inside the run's own directory


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def _writable(directory: Path) -> bool:
    """Create and delete a temporary file: unlike os.access, this also holds for root and read-only mounts."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def check_output(out: Path, checkpoint: str, resume: bool, overwrite: bool) -> None:
    """Refuse an unusable or occupied --output; writes nothing."""
    if out.exists() and not out.is_dir():
        raise ScuError(f"--output {out} is a file; pass a directory path")
    if (holder := _holder(out / LOCK_FILE)) is not None:
        raise _in_use(out, holder)
    _check_contents(out, checkpoint, resume, overwrite)


def _check_contents(out: Path, checkpoint: str, resume: bool, overwrite: bool) -> None:
    place = _nearest_existing(out)
    if not place.is_dir() or not _writable(place):
        raise ScuError(f"cannot write to {place}; choose a writable --output")
    if resume:
        if overwrite:
            raise ScuError("--resume continues the run in --output and --overwrite replaces it; pass one of them")
        if not (out / checkpoint).exists():
            raise ScuError(f"no checkpoint {checkpoint} in {out} to resume from; drop --resume to start a new run")
        return
    if overwrite or not out.exists():
        return
    if any((out / name).exists() for name in RUN_MARKERS):
        raise ScuError(f"{out} already holds a run; pass --resume to continue it, --overwrite to replace it, or another --output")
    others = sorted(p.name for p in out.iterdir() if p.name not in (LOCK_FILE, PLAIN_FIT))
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise ScuError(f"{out} is not empty ({shown}); use a new or empty --output, or pass --overwrite to write over it")


def _in_use(out: Path, holder: str) -> ScuError:
    return ScuError(f"{out} is in use by another scu run (pid {holder}); wait for it to end or choose another --output")


def _holder(lock_file: Path) -> str | None:
    """The pid of the live run holding `lock_file`, or None when no run holds it (a dead run's lock is free)."""
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
    finally:
        os.close(fd)  # also drops the shared lock just taken
    return None


class RunLock:
    """An exclusive flock on `out/.scu.lock`, held until release() or process exit (the OS drops it)."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / LOCK_FILE
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            raise _in_use(out, holder) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


def claim(out: Path, checkpoint: str, resume: bool, overwrite: bool) -> RunLock:
    """Lock `out`, re-check it under the lock (another run may have started meanwhile), clear old records."""
    lock = RunLock(out)
    try:
        _check_contents(out, checkpoint, resume, overwrite)
    except BaseException:
        lock.release()
        raise
    if overwrite:
        for name in RUN_RECORDS:
            (out / name).unlink(missing_ok=True)
    return lock


def fingerprint(arrays: Iterable[np.ndarray | None]) -> str:
    """sha256 over packed token blocks: any change of content, tokenizer, packing or split changes it."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(b"none" if a is None else np.ascontiguousarray(a).tobytes() + str(a.shape).encode())
    return h.hexdigest()


def base_fingerprint(base_model: str) -> str:
    """The base weights' index: file names and sizes of a local model (its weight index verbatim), or the id."""
    path = Path(base_model).expanduser()
    if not path.exists():
        return f"id:{base_model}"
    if path.is_file():
        return f"file:{path.name}:{path.stat().st_size}"
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.suffix in {".safetensors", ".bin", ".gguf"}:
            h.update(f"{f.name}:{f.stat().st_size}\n".encode())
        elif f.name.endswith(".index.json") or f.name == "config.json":
            h.update(f.read_bytes())
    return h.hexdigest()


def publish(out: Path, write: Callable[[Path], None]) -> None:
    """Atomic files from a library that writes straight to its target (PEFT, mlx-lm): `write(tmpdir)`, then
    sync and rename each file into `out`, so a crash leaves the previous file or the new one, never half of one."""
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".publish-"))
    try:
        write(tmp)
        for f in sorted(tmp.iterdir()):
            fsync_file(f)
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
