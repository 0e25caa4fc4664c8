"""The 15 ImageNet-C benchmark corruptions and the 4 extras, at severities 1..5.

Registry over the implementations in ``corruptions_{noise,blur,weather,digital}.py``, which
reproduce the original generation script (Hendrycks & Dietterich, "Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations", ICLR 2019, arXiv:1903.12261) on today's
numpy/scipy/OpenCV/Pillow, without Wand/ImageMagick and without the ``imagecorruptions`` package.

>>> rng = np.random.default_rng(0)
>>> out = corrupt(image, "glass_blur", 3, rng)   # HxWx3 uint8 in, same shape uint8 out

Every random draw comes from the generator passed in, so ``corrupt(img, name, s,
np.random.default_rng(seed))`` is a pure function of its arguments. Differences to the
released data are documented per function (motion blur and snow: our ImageMagick-equivalent
kernel; frost and fog on images larger than the textures; impulse noise's own draws).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fastdino_cli.errors import DataError
from fastdino_cli.eval.corruption import blur, digital, noise, weather
from fastdino_cli.eval.corruption.common import SEVERITIES, check_image

CorruptionFn = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

# Groups as in the released tar files; brightness counts as weather.
GROUPS: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
    "extra": ("speckle_noise", "gaussian_blur", "spatter", "saturate"),
}
BENCHMARK: tuple[str, ...] = tuple(
    name for group in ("noise", "blur", "weather", "digital") for name in GROUPS[group]
)
EXTRA: tuple[str, ...] = GROUPS["extra"]
ALL: tuple[str, ...] = BENCHMARK + EXTRA

CORRUPTIONS: dict[str, CorruptionFn] = {
    "gaussian_noise": noise.gaussian_noise,
    "shot_noise": noise.shot_noise,
    "impulse_noise": noise.impulse_noise,
    "defocus_blur": blur.defocus_blur,
    "glass_blur": blur.glass_blur,
    "motion_blur": blur.motion_blur,
    "zoom_blur": blur.zoom_blur,
    "snow": weather.snow,
    "frost": weather.frost,
    "fog": weather.fog,
    "brightness": weather.brightness,
    "contrast": digital.contrast,
    "elastic_transform": digital.elastic_transform,
    "pixelate": digital.pixelate,
    "jpeg_compression": digital.jpeg_compression,
    "speckle_noise": noise.speckle_noise,
    "gaussian_blur": blur.gaussian_blur,
    "spatter": weather.spatter,
    "saturate": digital.saturate,
}
assert tuple(CORRUPTIONS) == ALL

# Corruptions that draw no random numbers (output depends on the image and severity only).
DETERMINISTIC: tuple[str, ...] = (
    "defocus_blur",
    "zoom_blur",
    "brightness",
    "contrast",
    "pixelate",
    "jpeg_compression",
    "gaussian_blur",
    "saturate",
)


def group_of(name: str) -> str:
    """The group (noise, blur, weather, digital, extra) a corruption belongs to."""
    for group, names in GROUPS.items():
        if name in names:
            return group
    raise DataError(f"unknown corruption {name!r}; choose from {', '.join(ALL)}")


def parse_corruptions(spec: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """Resolve a user selection: names, group names, ``benchmark``/``extra``/``all``; commas ok."""
    if spec is None:
        return list(ALL)
    items = spec.split(",") if isinstance(spec, str) else [s for x in spec for s in x.split(",")]
    out: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if item == "all":
            names: tuple[str, ...] = ALL
        elif item == "benchmark":
            names = BENCHMARK
        elif item in GROUPS:
            names = GROUPS[item]
        elif item in CORRUPTIONS:
            names = (item,)
        else:
            import difflib

            close = difflib.get_close_matches(item, list(ALL) + list(GROUPS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DataError(
                f"unknown corruption {item!r}{hint}; choose from {', '.join(ALL)}, a group "
                f"({', '.join(GROUPS)}), 'benchmark' or 'all'"
            )
        out += [n for n in names if n not in out]
    if not out:
        raise DataError("--corruptions selects nothing; give names such as 'fog,snow' or 'all'")
    return out


def parse_severities(spec: str | list[int] | tuple[int, ...] | None) -> list[int]:
    """Resolve ``"1,3,5"``, ``"1-5"`` or a list of ints to sorted severities in 1..5."""
    if spec is None:
        return list(SEVERITIES)
    if isinstance(spec, str):
        values: list[int] = []
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            try:
                if "-" in part:
                    lo, hi = (int(v) for v in part.split("-", 1))
                    values += list(range(lo, hi + 1))
                else:
                    values.append(int(part))
            except ValueError:
                raise DataError(
                    f"--severities {spec!r} is not a list such as '1,3,5' or '1-5'"
                ) from None
    else:
        values = [int(v) for v in spec]
    bad = [v for v in values if v not in SEVERITIES]
    if bad or not values:
        raise DataError(f"--severities {spec!r}: severities are 1, 2, 3, 4 and 5")
    return sorted(set(values))


def corrupt(image: np.ndarray, name: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Apply corruption ``name`` at ``severity`` (1..5) to an HxWx3 uint8 RGB image."""
    if name not in CORRUPTIONS:
        group_of(name)  # raises with the list of names
    image = check_image(image)
    out = CORRUPTIONS[name](image, severity, rng)
    return np.ascontiguousarray(out, dtype=np.uint8)


def corruption_rng(seed: int, name: str, severity: int, index: int) -> np.random.Generator:
    """The generator for image ``index`` under (``name``, ``severity``) in a seeded run.

    Independent of batch order and worker assignment, so a run is reproducible with any
    number of data-loader workers.
    """
    return np.random.default_rng([seed, ALL.index(name), severity, index])
