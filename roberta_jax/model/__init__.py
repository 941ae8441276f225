"""The model: the architecture config, the Flax encoder and its task heads, and HF checkpoints both ways."""
