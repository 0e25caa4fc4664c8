"""What a Grad-CAM map explains and how: the names ``fastdino gradcam --help`` shows.

Plain data with no torch or grad-cam import, so the command line can describe its options
without loading the package (``cam.py`` holds the implementations of these names).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastdino_cli.errors import ConfigError

DEFAULT_TARGET_LAYER = "blocks.-1.norm1"
"""The last block's first norm: ``norm2`` and the attention output give all-zero maps."""

PROBE_LAYERS = "probe"
"""``--layer probe``: the first norm of every block whose CLS the probe head reads."""

LAYER_HELP = (
    "Target layer(s): a dotted path below the backbone, several comma-separated (their maps "
    "are averaged), or 'probe': the blocks the probe head reads."
)

METHOD_NAMES = (
    "gradcam",
    "gradcam++",
    "hirescam",
    "gradcam-elementwise",
    "xgradcam",
    "layercam",
    "eigengradcam",
    "eigencam",
    "scorecam",
    "ablationcam",
)
"""The saliency methods of ``cam.METHODS``, in the order ``--help`` lists them."""

TARGET_HELP = "predicted | true | class:NAME | self | prototype | prototype:NAME"


@dataclass(frozen=True)
class TargetSpec:
    """What a map explains; ``class_name`` for ``class:NAME`` and ``prototype:NAME``."""

    kind: str
    class_name: str | None = None

    @property
    def needs_probe(self) -> bool:
        return self.kind in ("predicted", "true", "class")


def target_layers(text: str, n_last_blocks: int | None) -> list[str]:
    """``--layer`` text -> dotted paths below the backbone.

    ``probe`` names ``blocks.-k.norm1`` for k = n .. 1, the blocks whose CLS tokens a probe
    head reading the last ``n_last_blocks`` blocks sees (the last block alone without a head).
    The ``grad-cam`` package computes one map per layer, min-max scales each and averages them.
    """
    layers = [part.strip() for part in text.split(",") if part.strip()]
    if not layers:
        raise ConfigError(f"--layer {text!r} names no layer; e.g. {DEFAULT_TARGET_LAYER}")
    out: list[str] = []
    for layer in layers:
        if layer.lower() == PROBE_LAYERS:
            n = max(1, int(n_last_blocks or 1))
            out += [f"blocks.-{k}.norm1" for k in range(n, 0, -1)]
        else:
            out.append(layer)
    return list(dict.fromkeys(out))


def parse_target(text: str) -> TargetSpec:
    """``--target`` text -> TargetSpec, or a one-line ``ConfigError`` listing the valid forms."""
    kind, _, name = text.partition(":")
    kind = kind.strip().lower()
    if kind in ("predicted", "true", "self", "prototype") and not name:
        return TargetSpec(kind)
    if kind in ("class", "prototype") and name.strip():
        return TargetSpec(kind, name.strip())
    raise ConfigError(f"bad --target {text!r}; use one of: {TARGET_HELP}")
