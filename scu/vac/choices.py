"""The names `scu compress` and `scu eval-ppl` offer, kept free of torch so that building the CLI stays fast."""

METHODS = ("svd", "fwsvd", "asvd", "whiten", "vac")
ORDERS = ("front", "back", "middle-out")
MODES = ("kd", "lora", "none")
TRUST_HELP = "run the model's own Python code (auto_map); only for sources you trust (scu's VAC directories need no flag)"
