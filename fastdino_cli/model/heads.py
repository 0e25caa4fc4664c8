"""DINO / iBOT projection heads.

MLP (``nlayers`` Linear layers with GELU between them, ending in a bottleneck), L2 normalisation,
then a prototype layer whose weight rows are L2-normalised at every call: weight normalisation
with the scale fixed to 1, as DINOv2 uses it. The normalisation is explicit (``F.normalize`` on a
plain ``last_layer.weight`` parameter) so the state dict holds plain tensors that load with
``weights_only`` and shard with FSDP2 like any other weight. ``last_layer`` is what the
last-layer freeze of the schedules targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastdino_cli.config import HeadConfig


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
    ) -> None:
        """Args:
        in_dim: backbone width.
        n_prototypes: output dimension K.
        bottleneck_dim: width before the prototype layer.
        hidden_dim: width of the hidden MLP layers.
        nlayers: number of Linear layers in the MLP (1 = a single projection).
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
        self.last_layer = nn.Linear(bottleneck_dim, n_prototypes, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.last_layer.weight, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_dim) -> (..., n_prototypes) logits."""
        x = self.mlp(x)
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        x = F.normalize(x, dim=-1, eps=eps)
        w = F.normalize(self.last_layer.weight, dim=1, eps=eps)
        return F.linear(x, w)


def build_head(in_dim: int, cfg: HeadConfig) -> DinoHead:
    """A head sized by a ``HeadConfig`` section."""
    return DinoHead(
        in_dim,
        n_prototypes=cfg.n_prototypes,
        bottleneck_dim=cfg.bottleneck_dim,
        hidden_dim=cfg.hidden_dim,
        nlayers=cfg.nlayers,
    )
