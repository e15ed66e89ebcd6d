"""Atomic writes go through mkstemp/mkdtemp (0600/0700); what lands in place must have a plain save's mode."""

from __future__ import annotations

import os
import stat

import pytest

from scu.report.records import atomic_write_json, staging_dir


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_file_gets_the_umask_mode_and_a_replaced_file_keeps_its_own(tmp_path, umask_022):
    new = tmp_path / "new.json"
    atomic_write_json(new, {"a": 1})
    assert mode(new) == 0o644

    kept = tmp_path / "kept.json"
    kept.write_text("{}")
    os.chmod(kept, 0o640)
    atomic_write_json(kept, {"a": 2})
    assert mode(kept) == 0o640 and kept.read_text().startswith("{")


def test_a_staging_folder_gets_a_plain_mkdirs_mode(tmp_path, umask_022):
    assert mode(staging_dir(tmp_path, ".x-")) == 0o755
