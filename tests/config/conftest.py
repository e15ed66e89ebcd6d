"""Local config.json directories with the real dimensions of public models (no weights, no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import LlamaConfig, MistralConfig, Olmo3Config, OlmoConfig, PretrainedConfig

# Dimensions from each model's published config.json.
REAL_CONFIGS = {
    "Llama-3.2-1B": lambda: LlamaConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, max_position_embeddings=131072, tie_word_embeddings=True,
    ),
    "Llama-3.2-3B": lambda: LlamaConfig(
        vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
        num_key_value_heads=8, head_dim=128, max_position_embeddings=131072, tie_word_embeddings=True,
    ),
    "Llama-3.1-8B": lambda: LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=131072, tie_word_embeddings=False,
    ),
    "OLMo-7B": lambda: OlmoConfig(  # allenai/OLMo-7B-hf
        vocab_size=50304, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, max_position_embeddings=2048, tie_word_embeddings=False,
        pad_token_id=1, eos_token_id=50279,
    ),
    "OLMo-3-7B": lambda: Olmo3Config(  # allenai/Olmo-3-1025-7B
        vocab_size=100278, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, max_position_embeddings=65536, tie_word_embeddings=False,
        pad_token_id=100277, eos_token_id=100257,
    ),
    "Mistral-7B": lambda: MistralConfig(  # mistralai/Mistral-7B-v0.1
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=32768, tie_word_embeddings=False,
    ),
}


def save_config(root: Path, name: str, config: PretrainedConfig) -> Path:
    """A model directory holding only config.json, as `suggest --model DIR` reads it."""
    path = root / name
    config.save_pretrained(path)
    return path


@pytest.fixture
def model_dir(tmp_path):
    """make(name, config) -> a directory with that config.json."""
    return lambda name, config: save_config(tmp_path, name, config)


@pytest.fixture(scope="session")
def real_model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {name: save_config(root, name, make()) for name, make in REAL_CONFIGS.items()}
