"""SCU: closed-loop, information-theoretic control of LoRA fine-tuning, plus VAC compression."""

__version__ = "0.1.0"


class ScuError(Exception):
    """A user-facing error: one line that says what is wrong and how to fix it."""
