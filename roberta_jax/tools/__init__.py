"""Tools around runs and checkpoints: sweeps, exploration, event files, plots, conversion, tokenizer training."""
