"""Pretraining input: text files and datasets, the byte-level BPE tokenizer, packing into rows, host batches."""
