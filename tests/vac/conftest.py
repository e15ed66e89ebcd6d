"""Calibration blocks and fresh copies of the tiny pre-trained base for the VAC tests."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from scu.data.builtin import pydoc_topics
from scu.vac.data import blocks


@pytest.fixture(scope="session")
def tokenizer(tiny_base):
    return AutoTokenizer.from_pretrained(tiny_base)


@pytest.fixture(scope="session")
def calib(tokenizer) -> torch.Tensor:
    return blocks(pydoc_topics()[:30], tokenizer, 64, 8)


@pytest.fixture
def fresh(tiny_base):
    """A function returning a new float32 copy of the tiny base model."""
    return lambda: AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).eval()
