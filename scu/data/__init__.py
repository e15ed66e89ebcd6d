"""Text loading, tokenization, packing and train/validation separation."""
