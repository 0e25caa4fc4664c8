"""Reduced-scale JPEG decoding for low-resolution curriculum stages.

Why: FastDINOv2's first stage trains on 112 px global and 48 px local crops, yet every sample
starts by decoding the full JPEG (~500x375 on ImageNet) and cropping / resizing it ten times,
the antialiased resize of each large crop reading every one of its pixels. libjpeg can decode
at 1/2, 1/4 or 1/8 scale by dropping high DCT coefficients (Pillow ``Image.draft``): less work
for the decoder and for every resize, and an image that still carries the low frequencies a
112 px crop keeps. Measured gain per loader worker on a libjpeg-turbo CPU, where a full
500x375 decode takes under 1 ms: 1.12x to 1.18x for stage-1 samples
(``benchmarks/data_pipeline.py``);
larger photographs gain more (1/4 or 1/8 scale). The reduction is chosen per image so that the
largest crops are never upsampled because of it.

The bound. A RandomResizedCrop with scale ``s`` and aspect ratio ``r = w / h`` in
``[r_min, r_max]`` (``[3/4, 4/3]``) of an ``H x W`` image takes a box of area ``s * H * W``:
``w = sqrt(s H W r)``, ``h = sqrt(s H W / r)``, clipped to the image (``w <= W``, ``h <= H``),
and resizes it to ``size x size``. Its shorter side is therefore at least

    L = min( sqrt(s H W * min(r_min, 1 / r_max)),  min(H, W) )

(the square-root term is the shorter side of the most elongated box; the image's short side
bounds it when the box is clipped or RandomResizedCrop falls back to a central crop).
Decoding at ``1/f`` scale divides every side by ``f``. For each crop kind (global: the
stage's largest ``size``, local: its own), the box at the kind's LARGEST scale ``s_max`` must
still have ``L / f >= size`` on its short side after the reduction, which also keeps its pixel
count ``(s_max H W) / f^2 >= size^2``: the largest crops of every kind are never upsampled
because of the reduced decode. So

    f = the largest of 1, 2, 4, 8 with  f <= min over crop kinds of L(s_max) / size.

For a 500x375 JPEG: stage 1 (112 px at s <= 1, 48 px at s <= 0.32) gives
``min(375 / 112, 212 / 48) = 3.3``, so ``f = 2`` (250x188 decoded); stage 2 (224 / 96) gives
``f = 1``. Crops at smaller scales have proportionally smaller boxes; the exact path already
upsamples those that fall under their output size, and the fast path keeps their low
frequencies, which are all a small crop retains. Measured on skimage photographs at 500x375
(same box in normalised coordinates), fast vs exact crops: PSNR 45.7 dB mean / 36.2 dB worst at
112 px, 49.2 / 36.1 dB at 48 px (``tests/test_decode.py`` asserts 40 dB mean, 32 dB worst).

Gaussian noise patching (FastDINOv2 stage 2) is defined per pixel of the full decoded image
(SPEC section 2); a reduced decode would change its spatial scale, so stages with noise patching
always decode at full scale (``reduction`` returns 1). Non-JPEG files decode at full size.
``data.fast_decode=false`` turns the whole mechanism off.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from fastdino_cli.data.images import UnreadableImage, _to_rgb

JPEG_SCALES = (8, 4, 2, 1)
"""The reductions libjpeg's DCT scaling offers through Pillow's ``draft``."""

RATIO_RANGE = (3 / 4, 4 / 3)
"""Aspect ratios RandomResizedCrop draws (``multicrop.random_resized_crop_box``)."""


@dataclass(frozen=True)
class DecodeSpec:
    """What the crops of one curriculum stage need from the decoded image.

    ``crops``: one ``(output size, largest scale)`` pair per crop kind (global, local);
    ``enabled``: False decodes every file at full scale (``data.fast_decode=false``, noise
    patching on, or the ``crop`` strategy, which crops at native resolution).
    """

    crops: tuple[tuple[int, float], ...]
    enabled: bool = True
    ratio: tuple[float, float] = RATIO_RANGE


def min_crop_side(height: int, width: int, max_scale: float, ratio=RATIO_RANGE) -> float:
    """Shortest side a RandomResizedCrop box at scale ``max_scale`` can have (``L`` above)."""
    elongation = min(ratio[0], 1.0 / ratio[1])
    return min(math.sqrt(max_scale * height * width * elongation), float(min(height, width)))


def reduction(height: int, width: int, spec: DecodeSpec) -> int:
    """The JPEG scale factor ``f`` in {1, 2, 4, 8} for an ``height x width`` image (see above)."""
    if not spec.enabled or not spec.crops:
        return 1
    room = min(min_crop_side(height, width, scale, spec.ratio) / size for size, scale in spec.crops)
    return next(f for f in JPEG_SCALES if f <= room or f == 1)


def draft_request(height: int, width: int, factor: int) -> tuple[int, int]:
    """The (width, height) to ask ``Image.draft`` for so that it picks exactly ``factor``.

    Pillow picks the largest DCT scale ``k`` with ``k <= min(W // w_req, H // h_req)``; with
    ``w_req = W // f`` we get ``W // (W // f)`` in ``[f, 2f)``, hence exactly ``f``.
    """
    return max(1, width // factor), max(1, height // factor)


def decoded_size(height: int, width: int, factor: int) -> tuple[int, int]:
    """(height, width) libjpeg returns at scale ``1/factor`` (it rounds up)."""
    return -(-height // factor), -(-width // factor)


def load_rgb_for_crops(path: str | Path, spec: DecodeSpec | None) -> Image.Image:
    """Decode ``path`` to 8-bit RGB, at reduced scale for JPEGs when ``spec`` allows it.

    Same contract as ``images.load_rgb``: ``UnreadableImage`` for anything that does not decode.
    """
    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                if spec is not None and img.format == "JPEG":
                    w, h = img.size
                    f = reduction(h, w, spec)
                    if f > 1:
                        img.draft("RGB", draft_request(h, w, f))
                img.load()
                return _to_rgb(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UnreadableImage(f"{path}: {e}") from e
    finally:
        Image.MAX_IMAGE_PIXELS = old


def spec_for_stage(transform, *, fast_decode: bool) -> DecodeSpec:
    """The ``DecodeSpec`` of one stage's ``multicrop.MultiCropTransform``."""
    cfg = transform.cfg
    crops = [(transform.global_size, cfg.global_crops_scale[1])]
    if cfg.local_crops_number > 0:
        crops.append((transform.local_size, cfg.local_crops_scale[1]))
    enabled = fast_decode and not transform.noise.enabled and cfg.strategy != "crop"
    return DecodeSpec(crops=tuple(crops), enabled=enabled)
