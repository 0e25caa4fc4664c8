"""DINO / iBOT projection heads, as DINOv2 builds them (``dinov2/layers/dino_head.py``).

MLP (``nlayers`` Linear layers with GELU between them, ending in a bottleneck, trunc_normal(0.02)
weights, zero biases), L2 normalisation, then the prototype layer: DINOv2's
``weight_norm(Linear(bottleneck, K, bias=False))``, i.e. prototype k is
``weight_g[k] * weight_v[k] / ||weight_v[k]||``:

* ``weight_v`` (K, bottleneck), the direction, keeps ``nn.Linear``'s default init
  (kaiming-uniform, bound ``1 / sqrt(bottleneck)``): the reference creates this layer after its
  trunc_normal init pass, so that pass never reaches it;
* ``weight_g`` (K, 1), the per-prototype scale, starts at 1 and is TRAINED (with weight decay,
  and frozen together with ``weight_v`` during ``optim.freeze_last_layer_epochs``: see
  ``train/schedules.py``). ``norm_last_layer=True`` freezes it at 1 instead (DINO v1's
  ``norm_last_layer``), so every prototype is a unit vector and the logits are cosines.

The parametrisation is explicit (two plain parameters named as the reference's state dict names
them, the weight computed in ``forward``) rather than ``torch.nn.utils.parametrizations
.weight_norm``: that one stores ``parametrizations.weight.original0/1`` (keys that match neither
the reference nor a plain module), swaps the module's class at registration (as FSDP2's
``fully_shard`` does too), and recomputes the weight on every attribute access. Two plain
tensors load with ``weights_only``, shard with FSDP2 like any other weight, take part in the
EMA and keep DINOv2's checkpoint key names (``last_layer.weight_g``, ``last_layer.weight_v``).

Precision: the L2 normalisation, the prototype layer and therefore everything after it (the
temperatures, softmax and centering of ``ssl/losses.py``) run in fp32 even under autocast:
bf16 cosines divided by the teacher temperature 0.04 put percent-level noise on the teacher's
top probabilities. The MLP before them follows autocast.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastdino_cli.config import HeadConfig


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Leave autocast for a full-precision region (no-op where autocast does not exist, e.g.
    on the ``meta`` device the FLOP counter builds on)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class WeightNormLinear(nn.Module):
    """``weight_norm(Linear(in_dim, out_dim, bias=False))`` with ``dim=0``: row k of the weight
    is ``weight_g[k] * weight_v[k] / ||weight_v[k]||``, computed in fp32."""

    def __init__(self, in_dim: int, out_dim: int, *, freeze_scale: bool = False) -> None:
        """Args:
        in_dim: input width (the head's bottleneck).
        out_dim: number of prototypes K.
        freeze_scale: keep ``weight_g`` at 1 (not trained): DINO v1's ``norm_last_layer``.
        """
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not freeze_scale)
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """``nn.Linear``'s default init for the direction, scale 1."""
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))
        self.weight_g.fill_(1.0)

    def prototypes(self) -> Tensor:
        """(K, in_dim) fp32 prototypes."""
        v = self.weight_v.float()
        return v * (self.weight_g.float() / v.norm(dim=1, keepdim=True))

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_dim) -> (..., K) in fp32 (autocast is switched off here)."""
        with _autocast_off(x.device.type):
            return F.linear(x.float(), self.prototypes())

    def extra_repr(self) -> str:
        frozen = "" if self.weight_g.requires_grad else ", scale frozen at 1"
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}{frozen}"


class DinoHead(nn.Module):
    """Projection head: MLP -> L2 norm -> weight-normalised prototypes (no bias)."""

    def __init__(
        self,
        in_dim: int,
        *,
        n_prototypes: int,
        bottleneck_dim: int = 256,
        hidden_dim: int = 2048,
        nlayers: int = 3,
        norm_last_layer: bool = False,
    ) -> None:
        """Args:
        in_dim: backbone width.
        n_prototypes: output dimension K.
        bottleneck_dim: width before the prototype layer.
        hidden_dim: width of the hidden MLP layers.
        nlayers: number of Linear layers in the MLP (1 = a single projection).
        norm_last_layer: freeze every prototype's scale at 1 (DINO v1); False trains it
            (DINOv2).
        """
        super().__init__()
        layers: list[nn.Module] = []
        if nlayers == 1:
            layers.append(nn.Linear(in_dim, bottleneck_dim))
        else:
            layers += [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        self._init_mlp()
        # built after the MLP's init pass, as the reference does: same random stream per seed
        self.last_layer = WeightNormLinear(
            bottleneck_dim, n_prototypes, freeze_scale=norm_last_layer
        )

    @torch.no_grad()
    def _init_mlp(self) -> None:
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def reset_parameters(self) -> None:
        """The reference's init pass (MLP only), then the prototype layer's own default."""
        self._init_mlp()
        self.last_layer.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_dim) -> (..., n_prototypes) fp32 logits."""
        x = self.mlp(x)
        with _autocast_off(x.device.type):
            x = F.normalize(x.float(), dim=-1, eps=1e-12)
            return self.last_layer(x)


def build_head(in_dim: int, cfg: HeadConfig) -> DinoHead:
    """A head sized by a ``HeadConfig`` section."""
    return DinoHead(
        in_dim,
        n_prototypes=cfg.n_prototypes,
        bottleneck_dim=cfg.bottleneck_dim,
        hidden_dim=cfg.hidden_dim,
        nlayers=cfg.nlayers,
        norm_last_layer=cfg.norm_last_layer,
    )
