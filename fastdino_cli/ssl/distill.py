"""Distillation from a frozen teacher: the meta-architecture of ``distill.teacher`` runs.

DINOv2 trained its released ViT-S/B/L by distilling the ViT-g with the pretraining loop itself,
changed in four places; ``DistillMetaArch`` is ``SSLMetaArch`` with exactly those changes:

1. the targets come from a FROZEN teacher (``frozen_teacher``: another architecture, its own
   patch size, loaded from a checkpoint, never updated, no gradients, always in eval mode);
2. ``teacher`` stays what it is in ``SSLMetaArch``, the EMA of the student, updated by the
   loop's ``update_teacher`` after each step: it is the model ``final.pt`` stores as
   ``teacher``, so every evaluation reads the distilled student unchanged;
3. no masking and no stochastic depth (the loop's config is resolved with
   ``ibot.mask_sample_probability=0`` and ``model.drop_path_rate=0``; the student forward here
   passes no masks at all);
4. the iBOT loss on EVERY patch token of the two global crops (weight 1/N per token, divided by
   the 2B global crops: the mean over crops of the per-crop mean cross-entropy).

Token grids. iBOT compares the student's and the teacher's patch token at the same position, so
both must see the same grid. The teacher sees the student's global crops resized (bicubic,
antialiased) to ``grid x teacher_patch`` pixels, where ``grid`` is the student's grid
(``crop // student_patch``): a ViT-S/16 student at 224 px (14 x 14 tokens) is distilled from a
ViT-L/14 teacher shown 196 px (14 x 14 tokens). Equal patch sizes need no resize. Every crop
size of every curriculum stage is matched the same way, so no pairing is ever refused.

``mode="features"`` (a teacher without heads, e.g. imported DINOv2 weights): the student has no
DINO/iBOT heads but two linear projections (``cls_proj``, ``patch_proj``: student width ->
teacher width) and regresses the teacher's final-norm CLS and patch tokens with a cosine loss
(``feature_distill_loss``). Cosine, not smooth-L1: evaluations (kNN, the probes' features) read
the direction of L2-normalised features, the teacher's token norms vary from token to token
(large ViTs have a few high-norm tokens) and from backbone to backbone, and a cosine needs no
scale hyper-parameter (smooth-L1's ``beta`` depends on that scale).
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastdino_cli.config import CenteringConfig, DinoConfig, IbotConfig, ModelConfig
from fastdino_cli.data.masking import MultiCropBatch
from fastdino_cli.ssl.meta import SSLMetaArch, StudentOutput, TeacherOutput

DistillMode = Literal["heads", "features"]
HEAD_KEYS = ("dino_head", "ibot_head")
PROJECTION_KEYS = ("cls_proj", "patch_proj")


def match_grid(x: Tensor, student_patch: int, teacher_patch: int) -> Tensor:
    """The teacher's view of the student's crops ``x`` (B, 3, H, W): the pixels the student's
    patches cover (its border remainder dropped, as its patch embedding does), resized to the
    student's grid times the teacher's patch, so both token grids are equal."""
    gh, gw = x.shape[-2] // student_patch, x.shape[-1] // student_patch
    if tuple(x.shape[-2:]) != (gh * student_patch, gw * student_patch):
        x = x[..., : gh * student_patch, : gw * student_patch]
    size = (gh * teacher_patch, gw * teacher_patch)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)


def _cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """``1 - cos(a, b)`` along the last dimension, in fp32."""
    return 1.0 - F.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-8)


def feature_distill_loss(
    *,
    student_global_cls: Tensor,
    student_local_cls: Tensor | None,
    student_patches: Tensor,
    teacher_cls: Tensor,
    teacher_patches: Tensor,
) -> tuple[Tensor, Tensor]:
    """(CLS loss, patch loss) of feature distillation, both cosine distances.

    Shapes (B images, crop-major as the batch stacks them, projections already applied):
    ``student_global_cls`` and ``teacher_cls`` (2B, D); ``student_local_cls`` (n_local*B, D) or
    None; ``student_patches`` and ``teacher_patches`` (2B, N, D).

    CLS: the mean over every (student view, teacher view) pair of the batch-mean distance, where
    a global crop is paired with the teacher's token of the SAME crop (2 pairs) and each local
    crop with both teacher crops (2 x n_local pairs), DINO's pairing of local to global views.
    Patches: the mean distance over all tokens of the two global crops.
    """
    two_b = teacher_cls.shape[0]
    b = two_b // 2
    pair_sum = 2 * _cosine_distance(student_global_cls, teacher_cls).mean()  # 2 same-view pairs
    n_pairs = 2
    if student_local_cls is not None and student_local_cls.numel():
        n_local = student_local_cls.shape[0] // b
        s = student_local_cls.reshape(n_local, 1, b, -1)
        t = teacher_cls.reshape(1, 2, b, -1)
        pair_sum = pair_sum + _cosine_distance(s, t).mean(dim=-1).sum()
        n_pairs += 2 * n_local
    patch = _cosine_distance(student_patches, teacher_patches).mean()
    return pair_sum / n_pairs, patch


class DistillMetaArch(SSLMetaArch):
    """``SSLMetaArch`` distilling ``frozen_teacher`` (see the module docstring).

    Args:
        model, dino, ibot, centering: the student's sections, as for ``SSLMetaArch`` (resolved
            for distillation: the teacher's prototype counts, no drop path).
        frozen_teacher: ``ModuleDict`` with ``backbone`` and, in ``heads`` mode, ``dino_head``
            (and ``ibot_head`` when the teacher has a separate one), weights loaded.
        mode: ``heads`` or ``features``.
        cls_loss_weight, patch_loss_weight: ``features`` mode weights.
    """

    def __init__(
        self,
        *,
        model: ModelConfig,
        dino: DinoConfig,
        ibot: IbotConfig,
        centering: CenteringConfig,
        frozen_teacher: nn.ModuleDict,
        mode: DistillMode = "heads",
        cls_loss_weight: float = 1.0,
        patch_loss_weight: float = 1.0,
    ) -> None:
        super().__init__(model=model, dino=dino, ibot=ibot, centering=centering)
        self.mode = mode
        self.cls_loss_weight = cls_loss_weight
        self.patch_loss_weight = patch_loss_weight
        frozen_teacher.requires_grad_(False)
        frozen_teacher.eval()
        self.frozen_teacher = frozen_teacher
        if mode == "features":
            self._use_projections(frozen_teacher["backbone"].embed_dim)

    def _use_projections(self, teacher_dim: int) -> None:
        """Features mode: the heads give way to the two projections (EMA copy included)."""
        for part in (self.student, self.teacher):
            for key in HEAD_KEYS:
                if key in part:
                    del part[key]
        dim = self.student["backbone"].embed_dim
        for key in PROJECTION_KEYS:
            proj = nn.Linear(dim, teacher_dim)
            nn.init.trunc_normal_(proj.weight, std=0.02)
            nn.init.zeros_(proj.bias)
            self.student[key] = proj
            self.teacher[key] = copy.deepcopy(proj).requires_grad_(False)

    def train(self, mode: bool = True) -> DistillMetaArch:
        super().train(mode)
        self.frozen_teacher.eval()
        return self

    # ---- phases --------------------------------------------------------------------------------

    def _teacher_view(self, global_crops: Tensor) -> Tensor:
        return match_grid(
            global_crops,
            self.student["backbone"].patch_size,
            self.frozen_teacher["backbone"].patch_size,
        )

    def _student_outputs(self, batch: MultiCropBatch):
        """The student's backbone on the UNMASKED global crops and the local crops."""
        xs = [batch.global_crops]
        if batch.local_crops is not None:
            xs.append(batch.local_crops)
        return self.student["backbone"].forward_list(xs, None)

    @torch.no_grad()
    def frozen_teacher_forward(
        self, batch: MultiCropBatch, *, teacher_temp: float
    ) -> TeacherOutput:
        """Heads mode: the frozen teacher's centred targets for the CLS tokens (crop order 1,
        2) and for EVERY patch token of the global crops."""
        out = self.frozen_teacher["backbone"].forward_features(
            self._teacher_view(batch.global_crops)
        )
        cls_logits = self.frozen_teacher["dino_head"](out.cls)
        cls_targets = self.dino_loss.teacher_targets(cls_logits, teacher_temp)
        patch_logits = self._ibot_head(self.frozen_teacher)(out.patches.flatten(0, 1))
        patch_targets = self.ibot_loss.teacher_targets(patch_logits, teacher_temp)
        p = cls_targets.float().clamp_min(1e-12)
        entropy = -(p * p.log()).sum(-1).mean()
        return TeacherOutput(cls_targets, patch_targets, entropy)

    def distill_student_forward(self, batch: MultiCropBatch) -> StudentOutput:
        """Heads mode: the student's logits for every crop's CLS token and for every patch
        token of the global crops (no mask tokens)."""
        outs = self._student_outputs(batch)
        g_cls = outs[0].cls
        cls_in = g_cls if len(outs) == 1 else torch.cat([g_cls, outs[1].cls])
        logits = self.student["dino_head"](cls_in)
        n_g = g_cls.shape[0]
        patch_logits = self._ibot_head(self.student)(outs[0].patches.flatten(0, 1))
        return StudentOutput(
            global_logits=logits[:n_g],
            local_logits=logits[n_g:] if len(outs) > 1 else None,
            patch_logits=patch_logits,
            global_cls=g_cls,
        )

    def _feature_forward(self, batch: MultiCropBatch) -> tuple[Tensor, dict[str, Tensor]]:
        with torch.no_grad():
            t = self.frozen_teacher["backbone"].forward_features(
                self._teacher_view(batch.global_crops)
            )
        outs = self._student_outputs(batch)
        cls_loss, patch_loss = feature_distill_loss(
            student_global_cls=self.student["cls_proj"](outs[0].cls),
            student_local_cls=self.student["cls_proj"](outs[1].cls) if len(outs) > 1 else None,
            student_patches=self.student["patch_proj"](outs[0].patches),
            teacher_cls=t.cls,
            teacher_patches=t.patches,
        )
        loss = self.cls_loss_weight * cls_loss + self.patch_loss_weight * patch_loss
        return loss, {
            "loss": loss.detach(),
            "distill_cls": cls_loss.detach(),
            "distill_patch": patch_loss.detach(),
        }

    def forward(
        self, batch: MultiCropBatch, *, teacher_temp: float
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """One distillation forward: (total loss, detached metrics)."""
        if self.mode == "features":
            return self._feature_forward(batch)
        t = self.frozen_teacher_forward(batch, teacher_temp=teacher_temp)
        s = self.distill_student_forward(batch)
        n_images, n_patches = s.global_cls.shape[0], s.patch_logits.shape[0]
        weights = torch.full(
            (n_patches,), n_images / n_patches, device=s.patch_logits.device
        )  # 1 / tokens per crop: every crop's mean CE weighs the same
        return self.compute_losses(teacher=t, student=s, mask_weights=weights, n_images=n_images)
