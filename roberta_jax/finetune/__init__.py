"""Fine-tuning on the training runtime: initial weights, task data and batches, one module per task."""
