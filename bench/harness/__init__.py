"""Pieces of `python -m bench.scu_vs_baselines`: data splits, one fine-tune per job, summaries, report."""
