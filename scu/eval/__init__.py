"""Held-out evaluation: token-weighted bits per token and perplexity."""
