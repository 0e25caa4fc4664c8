"""What a Grad-CAM map explains and how: the names ``fastdino gradcam --help`` shows.

Plain data with no torch or grad-cam import, so the command line can describe its options
without loading the package (``cam.py`` holds the implementations of these names).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastdino_cli.errors import ConfigError

DEFAULT_TARGET_LAYER = "blocks.-1.norm1"
"""The last block's first norm: ``norm2`` and the attention output give all-zero maps."""

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


def parse_target(text: str) -> TargetSpec:
    """``--target`` text -> TargetSpec, or a one-line ``ConfigError`` listing the valid forms."""
    kind, _, name = text.partition(":")
    kind = kind.strip().lower()
    if kind in ("predicted", "true", "self", "prototype") and not name:
        return TargetSpec(kind)
    if kind in ("class", "prototype") and name.strip():
        return TargetSpec(kind, name.strip())
    raise ConfigError(f"bad --target {text!r}; use one of: {TARGET_HELP}")
