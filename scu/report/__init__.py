"""Run records (metadata, metrics), plots and model cards."""
