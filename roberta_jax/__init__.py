"""RoBERTa in JAX/Flax: pretraining, fine-tuning and HF `transformers` interop."""
