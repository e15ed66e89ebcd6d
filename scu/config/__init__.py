"""Configuration: the pydantic schema, YAML loading with CLI overrides, and smart config."""

from scu.config.registry import register_scale
from scu.config.schema import Config, load_config
from scu.config.smart import suggest

__all__ = ["Config", "load_config", "register_scale", "suggest"]
