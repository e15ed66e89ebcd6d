"""VAC: Variable Allocation Compression of a causal LM's linear layers into low-rank factors.

compress.py runs it (ranks from allocate.py, factors from factorize.py, statistics from
profile.py), recover.py distils the dense model back in, search.py tunes the allocation,
io.py saves a directory that transformers loads at compressed shapes (modeling_vac.py),
evaluate.py measures perplexity and speed. CLI: `scu compress`, `scu eval-ppl`.
"""
