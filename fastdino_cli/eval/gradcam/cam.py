"""Grad-CAM on ViT backbones with the ``grad-cam`` package (jacobgil/pytorch-grad-cam).

The package was written for CNNs; on a DINOv2-style ViT several things fail silently or loudly
unless they are handled here (``reference/eval_anchors.md`` §C):

- the target layer is the last block's *first* norm (``blocks.-1.norm1``): ``norm2`` and the
  attention output give all-zero maps. A probe head that reads the CLS of the last 4 blocks
  depends on the first norms of those 4 blocks: several target layers can be given, and the
  package min-max scales each layer's map and averages them (``spec.target_layers``);
- the token sequence is ``[CLS, registers..., patches...]``: the reshape drops ``1 + R`` tokens
  and folds the rest into the real patch grid ``(H // patch, W // patch)`` of *this* input (the
  package's own ViT reshape drops one token and assumes a square 14x14 grid);
- the backbone is frozen (``requires_grad=False`` everywhere), so the input is made to require
  grad; otherwise the package finds no gradient at the target layer;
- never under ``no_grad``/``inference_mode``, never under autocast, always fp32 (bf16 breaks the
  numpy conversion), and never through a ``torch.compile`` wrapper, whose graph skips hooks
  registered after compilation;
- the package's ``with`` form swallows ``IndexError`` (it prints and returns); hooks are
  released in ``finally`` instead.

A self-supervised backbone has no class output, so targets are either the stored linear probe's
logit (predicted, true or a named class) or a similarity of the embedding to a concept vector:
a class prototype (mean embedding of that class's images) or the image's own clean embedding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from unittest import mock

import numpy as np
import torch
from pytorch_grad_cam import (
    AblationCAM,
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam import ablation_cam as _ablation_cam_mod
from pytorch_grad_cam import score_cam as _score_cam_mod
from pytorch_grad_cam.ablation_layer import AblationLayerVit
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import Tensor, nn

from fastdino_cli.errors import ConfigError
from fastdino_cli.eval.features import FP32, Precision
from fastdino_cli.eval.gradcam.spec import DEFAULT_TARGET_LAYER


@dataclass(frozen=True)
class CamMethod:
    """One saliency method of the package and what it needs."""

    cls: type[BaseCAM]
    uses_targets: bool
    """False for methods that explain the activations alone (EigenCAM): no probe needed."""
    summary: str


METHODS: dict[str, CamMethod] = {
    "gradcam": CamMethod(GradCAM, True, "channel weights = mean gradient (Selvaraju et al.)"),
    "gradcam++": CamMethod(GradCAMPlusPlus, True, "second-order channel weights"),
    "hirescam": CamMethod(HiResCAM, True, "gradient x activation per position, summed"),
    "gradcam-elementwise": CamMethod(GradCAMElementWise, True, "ReLU(grad x act) per position"),
    "xgradcam": CamMethod(XGradCAM, True, "activation-normalised gradient weights"),
    "layercam": CamMethod(LayerCAM, True, "positive gradients x activations"),
    "eigengradcam": CamMethod(EigenGradCAM, True, "first principal component of grad x act"),
    "eigencam": CamMethod(EigenCAM, False, "first principal component of activations, no target"),
    "scorecam": CamMethod(ScoreCAM, True, "forward passes with each channel as a mask (slow)"),
    "ablationcam": CamMethod(AblationCAM, True, "drop in target when each channel is ablated"),
}
"""Keyed by ``spec.METHOD_NAMES`` (the light list ``--help`` shows; a test keeps them equal)."""


def get_method(name: str) -> CamMethod:
    try:
        return METHODS[name.lower()]
    except KeyError:
        raise ConfigError(
            f"unknown Grad-CAM method {name!r}; choose one of {', '.join(METHODS)}"
        ) from None


class TokenGridReshape:
    """``reshape_transform`` for the package: tokens (B, T, D) -> feature map (B, D, gh, gw).

    Drops the ``num_prefix_tokens`` leading tokens (CLS + registers) and folds the patch tokens
    row-major into the grid of the current input, set through ``grid`` before each call.
    """

    def __init__(self, num_prefix_tokens: int, grid: tuple[int, int] | None = None) -> None:
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.grid = grid

    def __call__(self, tokens: Tensor) -> Tensor:
        if tokens.ndim != 3:
            raise ValueError(f"expected tokens (B, T, D), got shape {tuple(tokens.shape)}")
        if self.grid is None:
            raise ValueError("TokenGridReshape.grid is not set; set it to (H // p, W // p)")
        gh, gw = self.grid
        b, t, d = tokens.shape
        if t - self.num_prefix_tokens != gh * gw:
            raise ValueError(
                f"target layer has {t} tokens, expected {self.num_prefix_tokens} prefix tokens "
                f"+ a {gh}x{gw} patch grid = {self.num_prefix_tokens + gh * gw}; is the target "
                "layer a token-wise layer of the backbone?"
            )
        patches = tokens[:, self.num_prefix_tokens :, :]
        return patches.reshape(b, gh, gw, d).permute(0, 3, 1, 2)


def resolve_module(root: nn.Module, dotted: str) -> nn.Module:
    """The sub-module at a dotted path; integer parts index lists, negatives from the end.

    ``blocks.-1.norm1`` is the last block's first norm; ``blocks.-1.-1.norm1`` the same for
    DINOv2's chunked blocks.
    """
    module: nn.Module = root
    walked: list[str] = []
    for part in dotted.split("."):
        try:
            if part.lstrip("-").isdigit() and isinstance(module, nn.ModuleList | nn.Sequential):
                module = module[int(part)]
            else:
                module = getattr(module, part)
        except (AttributeError, IndexError):
            where = ".".join(walked) or type(root).__name__
            names = [n for n, _ in module.named_children()][:12]
            raise ConfigError(
                f"target layer {dotted!r}: {where} has no child {part!r} (children: {names})"
            ) from None
        if not isinstance(module, nn.Module):
            raise ConfigError(f"target layer {dotted!r} is not a module ({type(module).__name__})")
        walked.append(part)
    return module


def uncompile(module: nn.Module) -> nn.Module:
    """Strip ``torch.compile`` wrappers (top level and children) so hooks fire."""
    module = getattr(module, "_orig_mod", module)
    for name, child in list(module.named_children()):
        if hasattr(child, "_orig_mod"):
            setattr(module, name, uncompile(child))
        else:
            uncompile(child)
    return module


def prepare_for_cam(module: nn.Module) -> nn.Module:
    """Uncompiled, fp32, eval-mode module (in place); Grad-CAM is run on this."""
    module = uncompile(module)
    return module.float().eval()


class CosineTarget:
    """cos(output, concept): the package calls it with one sample's output vector."""

    def __init__(self, concept: Tensor) -> None:
        self.concept = concept.detach().float()

    def __call__(self, output: Tensor) -> Tensor:
        c = self.concept.to(output.device)
        return torch.nn.functional.cosine_similarity(output, c, dim=-1)


class ProjectionTarget:
    """<output, concept / |concept|>.

    Used for the image's *own* clean embedding: cosine to itself is 1 with an exactly zero
    gradient (a maximum), so its Grad-CAM would be empty; the projection has the concept
    direction as gradient.
    """

    def __init__(self, concept: Tensor) -> None:
        c = concept.detach().float()
        self.concept = c / c.norm().clamp_min(1e-12)

    def __call__(self, output: Tensor) -> Tensor:
        return (output * self.concept.to(output.device)).sum(-1)


@contextlib.contextmanager
def _grad_enabled_fp32(model: nn.Module) -> Iterator[None]:
    """Gradients on (even inside no_grad / inference_mode), autocast off, params frozen.

    Parameters are frozen during the call so no ``.grad`` is accumulated on the caller's model;
    the graph comes from the input, which requires grad. A probe classifier's precision policy
    (``features.Precision``: autocast + fp16-rounded features) is set to fp32 for the gradients
    only; the class a map explains was predicted under the policy (``CamModel.logits``). Flags,
    policies and train mode are restored.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    policies = [
        (m, m.precision)
        for m in model.modules()
        if isinstance(getattr(m, "precision", None), Precision)
    ]
    was_training = model.training
    device_type = next(model.parameters()).device.type
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        for m, _ in policies:
            m.precision = FP32
        with (
            torch.inference_mode(False),
            torch.enable_grad(),
            torch.autocast(device_type=device_type, enabled=False),
        ):
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, policy in policies:
            m.precision = policy
        model.train(was_training)


@contextlib.contextmanager
def _quiet_inner_progress() -> Iterator[None]:
    """ScoreCAM / AblationCAM print a tqdm bar per image; ours covers the whole job."""
    quiet = SimpleNamespace(tqdm=lambda iterable, *a, **k: iterable)
    with (
        mock.patch.object(_score_cam_mod, "tqdm", quiet),
        mock.patch.object(_ablation_cam_mod, "tqdm", quiet),
    ):
        yield


def compute_cam(
    model: nn.Module,
    inputs: Tensor,
    targets: Sequence[Callable[[Tensor], Tensor]] | None,
    *,
    backbone: nn.Module,
    method: str = "gradcam",
    target_layer: str | Sequence[str] = DEFAULT_TARGET_LAYER,
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
    score_batch_size: int = 32,
) -> np.ndarray:
    """Grad-CAM maps of one batch: (B, H, W) float32 in [0, 1], the input's size.

    Args:
        model: maps normalised images (B, 3, H, W) to logits or embeddings; contains
            ``backbone``. Made uncompiled, fp32 and eval in place.
        inputs: normalised images (B, 3, H, W), H and W multiples of the patch size.
        targets: one callable per image on that image's output, or None for methods that
            need none (EigenCAM). Required for target-based methods: the package's fallback
            (argmax of the output) is meaningless on an embedding.
        backbone: the ViT inside ``model``: ``patch_size``, ``num_register_tokens`` and the
            target layer are read from it.
        target_layer: dotted path below ``backbone`` (default the last block's ``norm1``), or
            several: the package computes a map per layer, min-max scales each, and returns
            the min-max scaled mean of those maps.
    """
    spec = get_method(method)
    if spec.uses_targets and targets is None:
        raise ValueError(f"method {method!r} needs one target per image")
    if targets is not None and len(targets) != inputs.shape[0]:
        raise ValueError(f"{len(targets)} targets for {inputs.shape[0]} images")
    model = prepare_for_cam(model)
    backbone = uncompile(backbone)
    names = [target_layer] if isinstance(target_layer, str) else list(target_layer)
    if not names:
        raise ConfigError("no target layer given")
    layers = [resolve_module(backbone, name) for name in names]
    patch = int(backbone.patch_size)
    h, w = int(inputs.shape[-2]), int(inputs.shape[-1])
    if h % patch or w % patch:
        raise ConfigError(
            f"image size {h}x{w} is not a multiple of the patch size {patch}; "
            f"use e.g. --image-size {max(patch, h // patch * patch)}"
        )
    gh, gw = h // patch, w // patch
    prefix = 1 + int(getattr(backbone, "num_register_tokens", 0))
    reshape = TokenGridReshape(prefix, (gh, gw))
    device = next(model.parameters()).device
    kwargs: dict = {}
    if spec.cls is AblationCAM:
        kwargs = {"ablation_layer": AblationLayerVit(), "batch_size": score_batch_size}
    with _grad_enabled_fp32(model), _quiet_inner_progress():
        # the copy is made here, outside any caller's inference_mode, so autograd can use it
        x = inputs.detach().to(device, torch.float32).clone().requires_grad_(True)
        cam = spec.cls(model, target_layers=layers, reshape_transform=reshape, **kwargs)
        if spec.cls is ScoreCAM:
            cam.batch_size = score_batch_size
        try:
            maps = cam(
                input_tensor=x,
                targets=list(targets) if targets is not None else None,
                aug_smooth=aug_smooth,
                eigen_smooth=eigen_smooth,
            )
        finally:
            cam.activations_and_grads.release()
    maps = np.nan_to_num(np.asarray(maps, dtype=np.float32), nan=0.0)
    return np.clip(maps, 0.0, 1.0)


def class_targets(indices: Sequence[int]) -> list[ClassifierOutputTarget]:
    """Targets on a classifier's logits, one class index per image."""
    return [ClassifierOutputTarget(int(i)) for i in indices]


def similarity_targets(concepts: Tensor, kind: str = "cosine") -> list[Callable]:
    """Targets on an embedding: cosine (or projection) to one concept vector per image."""
    cls = {"cosine": CosineTarget, "projection": ProjectionTarget}[kind]
    return [cls(c) for c in concepts]
