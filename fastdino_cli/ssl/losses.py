"""DINOv2's objective: DINO cls-token loss, iBOT masked-patch loss, KoLeo, teacher centering.

Formulas (``CE(t, s) = -sum_k t_k * log_softmax(s / tau_s)_k``, batch-mean unless noted)::

    dino   = sum over (student view v, teacher global view j), v != j, of CE(T_j, S_v)
             / (2 + max(2 * n_local, 1))     # = mean over all cross-view pairs when n_local > 0;
             # the reference counts max(n_local * 2, 1) local terms, so without local crops
             # the two global terms are divided by 3, not 2 (reproduced)
    ibot   = sum over masked tokens i of CE(T_i, S_i) / n_masked(image(i))  /  (2B)
             # mean over all 2B global crops of the per-image mean CE (unmasked crops add 0)
    koleo  = -mean_i log(||x_i - x_nn(i)|| + eps)   on L2-normalised features, fp32

Teacher targets are centred either by softmax centering (``softmax((t - c) / tau_t)`` with
``c <- m c + (1 - m) mean(t)`` updated *after* the targets are built, so the centre used at a
step holds batches up to the previous one) or by Sinkhorn-Knopp (3 iterations; the sums are
all-reduced only when ``torch.distributed`` is initialised, so it also works in one process,
which the reference's iBOT variant did not).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce(x: Tensor) -> Tensor:
    if _dist_on():
        dist.all_reduce(x)
    return x


def cross_entropy(teacher_probs: Tensor, student_logits: Tensor, student_temp: float) -> Tensor:
    """Per-row ``-sum_k t_k log_softmax(s / tau)_k`` in fp32; shape (...,)."""
    logp = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    return -(teacher_probs.float() * logp).sum(dim=-1)


@torch.no_grad()
def sinkhorn_knopp(
    teacher_logits: Tensor,
    teacher_temp: float,
    n_iterations: int = 3,
    n_samples: Tensor | None = None,
) -> Tensor:
    """Sinkhorn-Knopp targets (rows = samples, each summing to 1) from (B_local, K) logits.

    ``n_samples`` is the global number of samples (default: local rows times world size). Column
    (prototype) sums are global (all-reduced when distributed), row sums are local.
    """
    scaled = teacher_logits.float() / teacher_temp
    # a global constant shift cancels in the normalisation and keeps exp() finite
    shift = scaled.max().reshape(1) if scaled.numel() else scaled.new_zeros(1)
    if _dist_on():
        dist.all_reduce(shift, op=dist.ReduceOp.MAX)
    q = torch.exp(scaled - shift).t()  # (K, B)
    k = q.shape[0]
    b: float | Tensor
    if n_samples is None:
        world = dist.get_world_size() if _dist_on() else 1
        b = float(q.shape[1] * world)
    else:  # a device tensor (an all-reduced count): used as it is, never read on the host
        b = n_samples.to(q.dtype)
    total = _all_reduce(q.sum().reshape(1))
    q = q / total
    for _ in range(n_iterations):
        rows = _all_reduce(q.sum(dim=1, keepdim=True))
        q = q / rows / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).t()


class SoftmaxCenter(nn.Module):
    """A running centre of teacher logits with the reference's momentum and timing."""

    center: Tensor

    def __init__(self, shape: tuple[int, ...], momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(shape, dtype=torch.float32))

    @torch.no_grad()
    def targets(self, teacher_logits: Tensor, teacher_temp: float) -> Tensor:
        """``softmax((t - c) / tau)`` with the current centre, then update the centre."""
        probs = F.softmax((teacher_logits.float() - self.center) / teacher_temp, dim=-1)
        self.update(teacher_logits)
        return probs

    @torch.no_grad()
    def update(self, teacher_logits: Tensor) -> None:
        """``c <- m c + (1 - m) mean(t)`` over the global batch; kept as it is when the batch
        holds no rows (no masked patch anywhere) or a non-finite logit (a skipped step must not
        poison the centre of every later step). Decided on the device: no host sync."""
        flat = teacher_logits.float().reshape(-1, teacher_logits.shape[-1])
        stats = torch.cat([flat.sum(dim=0), flat.new_full((1,), float(flat.shape[0]))])
        stats = _all_reduce(stats)
        count = stats[-1]
        batch_mean = (stats[:-1] / count.clamp(min=1.0)).reshape(self.center.shape)
        usable = (count > 0) & torch.isfinite(stats).all()
        moved = self.center * self.momentum + batch_mean * (1 - self.momentum)
        self.center.copy_(torch.where(usable, moved, self.center))


class _CenteredCrossEntropy(nn.Module):
    """Shared by the DINO and iBOT losses: student temperature and teacher centering state."""

    def __init__(
        self,
        out_dim: int,
        *,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        centering: str = "softmax",
        sinkhorn_iterations: int = 3,
    ) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.centering = centering
        self.sinkhorn_iterations = sinkhorn_iterations
        self.center = SoftmaxCenter((1, out_dim), center_momentum)

    @torch.no_grad()
    def _centered(self, teacher_logits: Tensor, teacher_temp: float, n: Tensor | None) -> Tensor:
        if self.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(teacher_logits, teacher_temp, self.sinkhorn_iterations, n)
        return self.center.targets(teacher_logits, teacher_temp)


class DinoClsLoss(_CenteredCrossEntropy):
    """DINO cls-token cross-entropy over all cross-view pairs, with its own centering."""

    @torch.no_grad()
    def teacher_targets(self, teacher_logits: Tensor, teacher_temp: float) -> Tensor:
        """Centred teacher probabilities, same shape as ``teacher_logits`` (N, K)."""
        return self._centered(teacher_logits, teacher_temp, None)

    def forward(
        self, student_global: Tensor, student_local: Tensor | None, teacher_probs: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(dino_global, dino_local) terms, already divided by ``2 + max(2 * n_local, 1)``.

        Args:
            student_global: (2B, K) logits, crop-major (all images' crop 1, then crop 2).
            student_local: (n_local * B, K) logits, crop-major, or None.
            teacher_probs: (2B, K) centred targets in the teacher's own order (crop 1, crop 2).
        """
        t1, t2 = teacher_probs.chunk(2)
        s1, s2 = student_global.chunk(2)
        n_local = 0 if student_local is None else student_local.shape[0] // t1.shape[0]
        denom = 2 + max(2 * n_local, 1)  # DINOv2: global terms + max(local terms, 1)
        g = cross_entropy(t2, s1, self.student_temp).mean()
        g = g + cross_entropy(t1, s2, self.student_temp).mean()
        loc = student_global.new_zeros((), dtype=torch.float32)
        if n_local:
            for chunk in student_local.chunk(n_local):
                for t in (t1, t2):
                    loc = loc + cross_entropy(t, chunk, self.student_temp).mean()
        return g / denom, loc / denom


class IbotPatchLoss(_CenteredCrossEntropy):
    """iBOT cross-entropy on masked patch tokens, weighted per image, its own centering."""

    @torch.no_grad()
    def teacher_targets(self, teacher_logits: Tensor, teacher_temp: float) -> Tensor:
        """Centred targets for the (M, K) masked-token logits of this process."""
        n = None
        if self.centering == "sinkhorn_knopp":
            n = _all_reduce(teacher_logits.new_full((1,), float(teacher_logits.shape[0])))
        return self._centered(teacher_logits, teacher_temp, n)

    def forward(
        self, student_logits: Tensor, teacher_probs: Tensor, token_weights: Tensor, n_images: int
    ) -> Tensor:
        """``sum_i CE_i * w_i / n_images`` over the (M,) masked tokens.

        ``token_weights`` holds ``1 / n_masked`` of each token's image; ``n_images`` is the
        number of global crops (2B), masked or not.
        """
        if student_logits.shape[0] == 0:
            return student_logits.sum() * 0.0
        ce = cross_entropy(teacher_probs, student_logits, self.student_temp)
        return (ce * token_weights.float()).sum() / n_images


def koleo_loss(features: Tensor, eps: float = 1e-8) -> Tensor:
    """Kozachenko-Leonenko entropy regulariser on (B, D) features, always in fp32."""
    with torch.autocast(features.device.type, enabled=False):
        x = F.normalize(features.float(), dim=-1, eps=eps)
        if x.shape[0] < 2:
            return x.sum() * 0.0
        sim = x @ x.t()
        sim.fill_diagonal_(-1.0)
        nn_idx = sim.argmax(dim=1)
        dist_ = F.pairwise_distance(x, x[nn_idx], eps=eps)
        return -torch.log(dist_ + eps).mean()
