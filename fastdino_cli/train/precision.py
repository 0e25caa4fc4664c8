"""The numeric precision of a training run: its autocast dtype and, for fp16, its grad scaler.

Why fastdino owns this instead of ``Accelerator(mixed_precision=...)``: Accelerate turns mixed
precision on for CUDA only (on the CPU it silently keeps fp32 for bf16 requests of some
versions and never autocasts fp16 nor creates a scaler), and its ``AcceleratorState`` is a
process-wide singleton that refuses a second precision in the same process. Owning the
autocast region and the ``torch.amp.GradScaler`` makes the CPU and the GPU run the same code
path: ``train.precision=bf16`` / ``fp16`` autocast on the CPU exactly as on a GPU, so the dtype
handling (fp32 islands, the scaler's skip, its state in checkpoints) is tested without a GPU.

``train.precision``::

    fp32   no autocast
    bf16   autocast to bfloat16 (CPU and CUDA); no scaler (bf16 has fp32's exponent range)
    fp16   autocast to float16 and a dynamic ``GradScaler`` on the run's device
    auto   CUDA: bf16 where the GPU supports it, else fp16; CPU: fp32

The fp32 islands stay fp32 under any autocast: the heads' L2 normalisation and prototype layer
(``model/heads.py``), the losses' softmax / centering (``ssl/losses.py``) and KoLeo.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision_name(precision: str, device_type: str) -> str:
    """``train.precision`` with ``auto`` made concrete for ``device_type``."""
    if precision != "auto":
        return precision
    if device_type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


@dataclass
class Precision:
    """The autocast dtype and grad scaler of a run on one device type."""

    name: str
    """``fp32``, ``bf16`` or ``fp16`` (never ``auto``)."""
    device_type: str
    scaler: Any = None
    """The ``torch.amp.GradScaler`` with fp16, else None."""

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype (None: fp32, no autocast)."""
        return DTYPES[self.name]

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward's autocast region (a no-op in fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def build_precision(precision: str, device: torch.device) -> Precision:
    """The ``Precision`` of ``train.precision`` on ``device`` (a scaler only with fp16)."""
    name = resolve_precision_name(precision, device.type)
    scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
    return Precision(name, device.type, scaler)
