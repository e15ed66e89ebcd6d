"""Small model and tokenizer builders used by the demo, tests, evaluation and benchmarks."""
