"""Shared fixtures: tiny models built offline from a config, and a briefly pre-trained cached base."""

from __future__ import annotations

from pathlib import Path

import pytest

from scu.models.tiny import TEST_BASE, cached_base


REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_base() -> Path:
    """Directory with a pre-trained tiny Llama + tokenizer (built once, cached under SCU_CACHE): trained on stdlib
    source, fine-tuned on pydoc prose in tests."""
    return cached_base(TEST_BASE, progress=False)


@pytest.fixture
def pydoc_txt(tmp_path: Path) -> Path:
    """A .txt fine-tuning corpus (pydoc topics, blank-line separated documents)."""
    from scu.data.builtin import pydoc_topics

    path = tmp_path / "train.txt"
    path.write_text("\n\n".join(pydoc_topics()[:40]))
    return path
