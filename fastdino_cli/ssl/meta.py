"""Student and teacher in ONE module, the EMA update, and one training forward in named phases.

``SSLMetaArch`` holds ``student`` and ``teacher`` ``ModuleDict``s (``backbone``, ``dino_head`` and,
with ``ibot.separate_head``, ``ibot_head``) plus the two losses, whose centres are buffers of
their own (saved through ``loss_state_dict``, not in the student/teacher state dicts). Keeping
everything under one root is what FSDP2 through Accelerate needs (one model per ``prepare``),
and the training step goes through the root's ``forward`` so sharded parameters are gathered.

One step (``forward``)::

    teacher_forward   unmasked global crops -> CLS logits (centred targets, crop order 1, 2)
                      and patch logits at the student's masked positions
    student_forward   masked global crops + local crops through ``backbone.forward_list``
    compute_losses    DINO over cross-view pairs, iBOT on masked patches, KoLeo (fp32)

The teacher starts as a copy of the student, never receives gradients and always stays in eval
mode; ``update_teacher(m)`` applies ``t <- m t + (1 - m) s`` with ``torch._foreach_*`` after
each optimizer step (on local shards under FSDP2, which shards both copies the same way).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fastdino_cli.config import CenteringConfig, DinoConfig, IbotConfig, ModelConfig
from fastdino_cli.data.masking import MultiCropBatch
from fastdino_cli.model.heads import build_head
from fastdino_cli.model.vit import build_vit
from fastdino_cli.ssl.losses import DinoClsLoss, IbotPatchLoss, koleo_loss


@dataclass
class TeacherOutput:
    cls_targets: Tensor
    """(2B, K) centred DINO targets, crop order 1 then 2."""
    patch_targets: Tensor
    """(M, K') centred iBOT targets of the masked tokens (M may be 0)."""
    entropy: Tensor
    """Batch-mean entropy of the DINO targets (collapse monitor)."""


@dataclass
class StudentOutput:
    global_logits: Tensor
    local_logits: Tensor | None
    patch_logits: Tensor
    global_cls: Tensor
    """(2B, D) backbone CLS features of the masked global crops (KoLeo input)."""


def _masked_patches(patches: Tensor, batch: MultiCropBatch) -> Tensor:
    """(M, D) tokens at the batch's masked positions, by integer gather: ``patches[masks]``
    would count the masked entries on the device and wait for that count (a host sync)."""
    image, token = batch.mask_index
    return patches[image, token]


class SSLMetaArch(nn.Module):
    """DINOv2 student/teacher pair with its losses."""

    def __init__(
        self,
        *,
        model: ModelConfig,
        dino: DinoConfig,
        ibot: IbotConfig,
        centering: CenteringConfig,
    ) -> None:
        super().__init__()
        self.dino_cfg = dino
        self.ibot_cfg = ibot
        student_backbone = build_vit(model)
        teacher_backbone = build_vit(model.model_copy(update={"drop_path_rate": 0.0}))
        dim = student_backbone.embed_dim
        self.student = nn.ModuleDict(
            {"backbone": student_backbone, "dino_head": build_head(dim, dino.head)}
        )
        self.teacher = nn.ModuleDict(
            {"backbone": teacher_backbone, "dino_head": build_head(dim, dino.head)}
        )
        if ibot.separate_head:
            self.student["ibot_head"] = build_head(dim, ibot.head)
            self.teacher["ibot_head"] = build_head(dim, ibot.head)
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        kw = {
            "center_momentum": centering.center_momentum,
            "centering": centering.method,
            "sinkhorn_iterations": centering.sinkhorn_iterations,
        }
        ibot_k = ibot.head.n_prototypes if ibot.separate_head else dino.head.n_prototypes
        self.dino_loss = DinoClsLoss(dino.head.n_prototypes, student_temp=dino.student_temp, **kw)
        self.ibot_loss = IbotPatchLoss(ibot_k, student_temp=dino.student_temp, **kw)

    # ---- module plumbing -----------------------------------------------------------------------

    def train(self, mode: bool = True) -> SSLMetaArch:
        super().train(mode)
        self.teacher.eval()
        return self

    @property
    def n_blocks(self) -> int:
        return len(self.student["backbone"].blocks)

    def _ibot_head(self, which: nn.ModuleDict) -> nn.Module:
        return which["ibot_head"] if "ibot_head" in which else which["dino_head"]

    def loss_state_dict(self) -> dict[str, Tensor]:
        """Loss centres (training state, kept out of the student/teacher weights)."""
        return {
            "dino_center": self.dino_loss.center.center.detach().clone(),
            "ibot_center": self.ibot_loss.center.center.detach().clone(),
        }

    def load_loss_state_dict(self, state: dict[str, Tensor]) -> None:
        self.dino_loss.center.center.copy_(state["dino_center"])
        self.ibot_loss.center.center.copy_(state["ibot_center"])

    @torch.no_grad()
    def revert_loss_state(self, state: dict[str, Tensor], where: Tensor) -> None:
        """Put back the centres of ``state`` (from ``loss_state_dict``) where the 0-d bool
        ``where`` is True: a skipped step leaves no trace, decided on the device."""
        for name, loss in (("dino_center", self.dino_loss), ("ibot_center", self.ibot_loss)):
            c = loss.center.center
            c.copy_(torch.where(where, state[name].to(c.device), c))

    # ---- phases --------------------------------------------------------------------------------

    @torch.no_grad()
    def teacher_forward(self, batch: MultiCropBatch, *, teacher_temp: float) -> TeacherOutput:
        out = self.teacher["backbone"].forward_features(batch.global_crops)
        cls_logits = self.teacher["dino_head"](out.cls)
        cls_targets = self.dino_loss.teacher_targets(cls_logits, teacher_temp)
        masked = _masked_patches(out.patches, batch)
        patch_logits = self._ibot_head(self.teacher)(masked)
        patch_targets = self.ibot_loss.teacher_targets(patch_logits, teacher_temp)
        p = cls_targets.float().clamp_min(1e-12)
        entropy = -(p * p.log()).sum(-1).mean()
        return TeacherOutput(cls_targets, patch_targets, entropy)

    def student_forward(self, batch: MultiCropBatch) -> StudentOutput:
        backbone = self.student["backbone"]
        xs, ms = [batch.global_crops], [batch.masks]
        if batch.local_crops is not None:
            xs.append(batch.local_crops)
            ms.append(None)
        outs = backbone.forward_list(xs, ms)
        g_cls = outs[0].cls
        cls_in = g_cls if len(outs) == 1 else torch.cat([g_cls, outs[1].cls])
        logits = self.student["dino_head"](cls_in)
        n_g = g_cls.shape[0]
        patch_logits = self._ibot_head(self.student)(_masked_patches(outs[0].patches, batch))
        return StudentOutput(
            global_logits=logits[:n_g],
            local_logits=logits[n_g:] if len(outs) > 1 else None,
            patch_logits=patch_logits,
            global_cls=g_cls,
        )

    def compute_losses(
        self, *, teacher: TeacherOutput, student: StudentOutput, mask_weights: Tensor, n_images: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        dino_global, dino_local = self.dino_loss(
            student.global_logits, student.local_logits, teacher.cls_targets
        )
        koleo = sum(koleo_loss(c) for c in student.global_cls.chunk(2))
        ibot = self.ibot_loss(student.patch_logits, teacher.patch_targets, mask_weights, n_images)
        loss = (
            self.dino_cfg.loss_weight * (dino_global + dino_local)
            + self.dino_cfg.koleo_loss_weight * koleo
            + self.ibot_cfg.loss_weight * ibot
        )
        metrics = {
            "loss": loss.detach(),
            "dino_global": dino_global.detach(),
            "dino_local": dino_local.detach(),
            "koleo": (koleo / 2).detach(),
            "ibot": ibot.detach(),
            "teacher_entropy": teacher.entropy.detach(),
        }
        return loss, metrics

    def forward(
        self, batch: MultiCropBatch, *, teacher_temp: float
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """One training forward: (total loss, detached metrics)."""
        t = self.teacher_forward(batch, teacher_temp=teacher_temp)
        s = self.student_forward(batch)
        return self.compute_losses(
            teacher=t,
            student=s,
            mask_weights=batch.mask_weights,
            n_images=batch.global_crops.shape[0],
        )

    @torch.no_grad()
    def update_teacher(self, momentum: float, *, apply: Tensor | None = None) -> None:
        """EMA ``t <- m t + (1 - m) s`` over matching parameters.

        ``apply``: a 0-d bool tensor on the device; where it is False the teacher stays exactly
        as it is (``s`` weighted 0), decided on the device, so the caller never reads it on the
        host. None applies the update.
        """
        t_params = list(self.teacher.parameters())
        s_params = list(self.student.parameters())
        if apply is None:
            torch._foreach_mul_(t_params, momentum)
            torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
            return
        w = apply.to(torch.float32) * (1.0 - momentum)  # 0 on a skipped step
        torch._foreach_mul_(t_params, 1.0 - w)
        torch._foreach_add_(t_params, torch._foreach_mul(s_params, w))
