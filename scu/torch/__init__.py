"""PyTorch backend: the differentiable regularizer over PEFT modules, the training loop, export."""
