"""The one rule for a ``--device`` string: which torch device it means, or a one-line error.

Every evaluation (``probe``, ``corrupt-eval``, ``fourier-heatmap``, ``gradcam``) and ``curate``
takes ``--device``; they all call :func:`resolve_device`, so ``auto``, ``cuda:1`` or a typo
mean the same thing everywhere. ``auto`` (the default of every subcommand) picks the first CUDA
device when there is one, else the CPU. A device this machine does not have (``cuda`` without a
GPU, ``cuda:3`` on a two-GPU machine, ``mps`` off a Mac) is a ``ConfigError`` that says what is
available, never a ``RuntimeError`` halfway through a run. ``train/`` does not use it: Accelerate
places a training run (one process per device).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastdino_cli.errors import ConfigError

if TYPE_CHECKING:
    import torch

DEVICE_HELP = "auto (CUDA when available, else CPU), cpu, cuda or cuda:N."


def available_devices() -> list[str]:
    """The device strings this machine accepts, for error messages."""
    import torch

    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``device`` as a ``torch.device`` this machine has (``None`` and ``"auto"``: the best one)."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.device):
        dev = device
    else:
        try:
            dev = torch.device(str(device).strip().lower())
        except (RuntimeError, ValueError):
            raise ConfigError(
                f"--device {device!r} is not a device; use {DEVICE_HELP.rstrip('.')}"
            ) from None
    shown = ", ".join(available_devices())
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {device}: no CUDA GPU is available on this machine; use --device cpu "
                "(or auto)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has only {shown}")
        return dev
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"--device {device}: MPS is not available here; available: {shown}")
        return dev
    if dev.type == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"--device {device}: unsupported device type {dev.type!r}; use {shown}")
