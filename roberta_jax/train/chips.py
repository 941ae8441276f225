"""Accelerator chips by `jax.Device.device_kind`: HBM, peak dense bf16 FLOP/s and HBM bandwidth.

Figures per chip (one JAX device: TPUs are driven as whole chips, megacore where they have two
cores), each from the vendor's public page:

    TPU v4       32 GiB HBM2,   275 TFLOP/s,  1,200 GB/s   cloud.google.com/tpu/docs/v4
    TPU v5e      16 GiB HBM2,   197 TFLOP/s,    819 GB/s   cloud.google.com/tpu/docs/v5e
    TPU v5p      95 GiB HBM2e,  459 TFLOP/s,  2,765 GB/s   cloud.google.com/tpu/docs/v5p
    TPU v6e      32 GiB HBM,    918 TFLOP/s,  1,640 GB/s   cloud.google.com/tpu/docs/v6e
    A100 80GB    80 GB HBM2e,   312 TFLOP/s,  2,039 GB/s   nvidia.com A100 datasheet (SXM)
    H100 SXM     80 GB HBM3,    989 TFLOP/s,  3,350 GB/s   nvidia.com H100 datasheet (SXM, dense)
    H200        141 GB HBM3e,   989 TFLOP/s,  4,800 GB/s   nvidia.com H200 datasheet (SXM, dense)
"""

from __future__ import annotations

import dataclasses

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    hbm_bytes: float
    peak_flops: float  # dense bfloat16 FLOP/s
    hbm_bandwidth: float  # bytes/s


# Keyed by the `device_kind` prefix JAX reports; the longest matching prefix wins ("TPU v5 lite" is v5e,
# "TPU v5" alone is v5p).
CHIPS: dict[str, Chip] = {
    "TPU v4": Chip("TPU v4", 32 * GiB, 275e12, 1200e9),
    "TPU v5 lite": Chip("TPU v5e", 16 * GiB, 197e12, 819e9),
    "TPU v5e": Chip("TPU v5e", 16 * GiB, 197e12, 819e9),
    "TPU v5": Chip("TPU v5p", 95 * GiB, 459e12, 2765e9),
    "TPU v6 lite": Chip("TPU v6e", 32 * GiB, 918e12, 1640e9),
    "TPU v6e": Chip("TPU v6e", 32 * GiB, 918e12, 1640e9),
    "NVIDIA A100": Chip("A100 80GB", 80e9, 312e12, 2039e9),
    "NVIDIA H100": Chip("H100 SXM", 80e9, 989e12, 3350e9),
    "NVIDIA H200": Chip("H200", 141e9, 989e12, 4800e9),
}


def chip_for(device_kind: str) -> Chip | None:
    """The chip whose key is the longest prefix of `device_kind`, or None (e.g. a CPU)."""
    keys = [k for k in CHIPS if device_kind.startswith(k)]
    return CHIPS[max(keys, key=len)] if keys else None
