"""The MLX backend (mlx-lm models and LoRA layers) and PEFT <-> mlx-lm adapter conversion.

Importing this package does not import MLX; the converter works without it.
"""
