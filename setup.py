"""roberta_jax: RoBERTa pretraining and fine-tuning in JAX/Flax, interoperable with HF transformers."""

from setuptools import find_packages, setup

setup(
    name="roberta_jax",
    version="0.1.0",
    description="RoBERTa in JAX/Flax: pretraining, fine-tuning and HF transformers interop",
    packages=find_packages(include=["roberta_jax", "roberta_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.30",
        "flax>=0.10",
        "optax",
        "orbax-checkpoint",
        "tokenizers>=0.19",
        "datasets",
        "ml_collections",
        "tensorboardX",
        "safetensors",
        "numpy",
        "absl-py",
    ],
    extras_require={
        # torch is pinned to the CPU build; the tests use it only for parity checks.
        "test": [
            "pytest", "pytest-xdist", "torch==2.13.0", "transformers",
            # reference implementations the metric tests compare against
            "scipy", "scikit-learn", "seqeval",
            # the notebook tests execute the notebooks
            "matplotlib", "nbclient", "nbformat", "ipykernel",
            # the ahead-of-time tests compile for TPU slices with libtpu's compiler (no TPU needed)
            "jax[tpu]",
        ],
        "notebooks": ["matplotlib", "nbclient", "nbformat", "ipykernel"],
        "gpu": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
    },
)
