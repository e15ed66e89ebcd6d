"""Configuration: the pydantic schema, YAML loading with CLI overrides, and smart config."""

from scu.config.schema import Config, load_config

__all__ = ["Config", "load_config"]
