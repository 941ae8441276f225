"""The training runtime shared by pretraining and fine-tuning: mesh and sharding, the compiled steps, the
MLM objective, the loop, checkpoints, metrics, and the command-line pieces of the entry points."""
