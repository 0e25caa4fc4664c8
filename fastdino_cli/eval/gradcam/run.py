"""``run_gradcam``: Grad-CAM maps of several checkpoints on the same images, and their files.

The library twin of ``fastdino gradcam``. Every checkpoint sees the same pixels (one eval
transform for all), so its maps line up pixel for pixel with the other columns of the figure.
What each map explains is recorded next to it: a probe class (predicted, true or named), the
cosine to a class prototype, the projection on the image's own embedding, or (EigenCAM) the
activations alone.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fastdino_cli import console
from fastdino_cli.devices import resolve_device
from fastdino_cli.errors import CheckpointError, ConfigError, DataError
from fastdino_cli.eval.gradcam.cam import class_targets, compute_cam, get_method, similarity_targets
from fastdino_cli.eval.gradcam.inputs import (
    CamModel,
    Sample,
    class_prototypes,
    list_images,
    load_cam_model,
    load_pixels,
    sample_per_class,
    sized_transform,
)
from fastdino_cli.eval.gradcam.result import CheckpointMaps, GradCamResult, write_gradcam
from fastdino_cli.eval.gradcam.spec import (
    DEFAULT_TARGET_LAYER,
    TargetSpec,
    parse_target,
    target_layers,
)
from fastdino_cli.eval.outputs import check_output_dir


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n} ({seen[n]})")
    return out


def _class_index(model: CamModel, name: str, what: str) -> int:
    assert model.class_names is not None
    if name not in model.class_names:
        shown = ", ".join(model.class_names[:12]) + (", ..." if len(model.class_names) > 12 else "")
        raise ConfigError(
            f"{what} {name!r} is not a class of the probe of {model.path or model.name} "
            f"(classes: {shown})"
        )
    return model.class_names.index(name)


def _no_probe_error(model: CamModel, spec: TargetSpec) -> CheckpointError:
    where = model.path or model.name
    return CheckpointError(
        f"{where} has no probe head, which --target {spec.kind} needs; run `fastdino probe "
        f"{where} --train ... --val ...` first, or use --target self|prototype or --method eigencam"
    )


def _batch_targets(
    model: CamModel,
    spec: TargetSpec,
    samples: Sequence[Sample],
    pixels: Tensor,
    logits: Tensor | None,
    protos: dict[str, Tensor],
) -> tuple[list, list[str], list[float | None]]:
    """Targets for one batch, what each explains, and the target's value."""
    if spec.needs_probe:
        assert logits is not None
        if spec.kind == "predicted":
            idx = logits.argmax(-1).tolist()
        elif spec.kind == "class":
            idx = [_class_index(model, spec.class_name, "--target class")] * len(samples)
        else:
            idx = []
            for s in samples:
                if s.true_class is None:
                    raise DataError(
                        f"{s.path} has no known true class for --target true; pass a labelled "
                        "folder with --data DIR --per-class N"
                    )
                idx.append(_class_index(model, s.true_class, f"true class of {s.path.name}"))
        probs = logits.softmax(-1)
        names = [model.class_names[i] for i in idx]
        scores = [float(probs[j, i]) for j, i in enumerate(idx)]
        return class_targets(idx), [f"class {n}" for n in names], scores
    emb = model.embed(pixels)
    if spec.kind == "self":
        return (
            similarity_targets(emb, "projection"),
            ["own embedding"] * len(samples),
            [None] * len(samples),
        )
    names = []
    for s in samples:
        name = spec.class_name or s.true_class
        if name is None:
            raise DataError(
                f"{s.path} has no known class for --target prototype; use --target "
                "prototype:NAME or --data DIR --per-class N"
            )
        names.append(name)
    concepts = torch.stack([protos[n].to(emb.device) for n in names])
    cos = torch.nn.functional.cosine_similarity(emb, concepts, dim=-1).tolist()
    return similarity_targets(concepts, "cosine"), [f"prototype {n}" for n in names], cos


def _layers_for(model: CamModel, text: str, explains_probe: bool) -> list[str]:
    """The target layers of one checkpoint, with a one-line caveat when a probe head reads
    more blocks than the maps look at."""
    n = getattr(model.classifier, "n_last_blocks", None) if model.classifier is not None else None
    layers = target_layers(text, n)
    if explains_probe and n and n > 1 and len(layers) < n:
        print(
            f"fastdino: note: the probe head of {model.path or model.name} reads the CLS of its "
            f"last {n} blocks; the map looks at {', '.join(layers)} only (--layer probe "
            f"averages over the {n} blocks)",
            file=sys.stderr,
        )
    return layers


def run_gradcam(
    checkpoints: Sequence[str | Path | CamModel],
    *,
    images: Sequence[str | Path] | None = None,
    data: str | Path | None = None,
    per_class: int = 2,
    target: str = "predicted",
    method: str = "gradcam",
    target_layer: str = DEFAULT_TARGET_LAYER,
    prototype_data: str | Path | None = None,
    prototype_per_class: int | None = 64,
    image_size: int | None = None,
    batch_size: int = 8,
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
    names: Sequence[str] | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: bool | None = None,
    out: str | Path | None = None,
) -> GradCamResult:
    """Grad-CAM maps of every checkpoint on the same images; optionally write them to ``out``.

    Images come from ``images`` (files or folders) or ``per_class`` images of every class of the
    labelled folder ``data``. ``target``: see ``spec.TARGET_HELP``; ``prototype`` targets use class
    means over ``prototype_data`` (default ``data``). ``out`` receives ``gradcam.json`` and
    ``maps/<checkpoint>/<NNN>_<image>.npy`` (``result.py``); the grid figure is drawn from the
    result by ``draw_gradcam`` of the drawing package. ``target_layer``: one dotted path,
    several comma-separated (their maps are averaged) or ``probe`` (``spec.target_layers``).
    """
    if not checkpoints:
        raise ConfigError("give at least one checkpoint")
    if out is not None:
        check_output_dir(out)
    spec = parse_target(target)
    cam_method = get_method(method)
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    if image_size is not None and image_size < 1:
        raise ConfigError(
            f"--image-size {image_size}: give a positive size in pixels, a multiple of the patch "
            "size (or leave it out for the probe's eval size)"
        )
    if prototype_per_class is not None and prototype_per_class < 1:
        raise ConfigError(
            f"--prototype-per-class {prototype_per_class} must be at least 1 (0 on the command "
            "line: all images)"
        )
    if images and data is not None:
        raise ConfigError("give either --images or --data, not both")
    if images:
        samples = list_images(images)
    elif data is not None:
        samples = sample_per_class(data, per_class, seed=seed)
    else:
        raise DataError("no images given: pass --images FILE|DIR or --data DIR --per-class N")
    dev = resolve_device(device)
    models = [c if isinstance(c, CamModel) else load_cam_model(c, device=dev) for c in checkpoints]
    if names:
        if len(names) != len(models):
            raise ConfigError(f"{len(names)} --names for {len(models)} checkpoints")
        for m, n in zip(models, names, strict=True):
            m.name = n
    col_names = _unique([m.name for m in models])
    needs_probe = spec.needs_probe and cam_method.uses_targets
    for m in models:
        if needs_probe and m.classifier is None:
            raise _no_probe_error(m, spec)

    # one transform for all columns: explicit size, else the first probe's, else the arch's
    first = models[0]
    if image_size is None and first.preprocess is not None:
        transform = first.preprocess
    else:
        transform = sized_transform(image_size or first.image_size or 224)
    known = {c for m in models for c in (m.class_names or [])}
    if images:
        samples = [
            Sample(s.path, s.path.parent.name if s.path.parent.name in known else None)
            for s in samples
        ]
    if cam_method.uses_targets and spec.kind in ("true", "prototype") and not spec.class_name:
        unknown = [s for s in samples if s.true_class is None]
        if unknown:
            raise DataError(
                f"{unknown[0].path} has no known true class for --target {spec.kind} "
                f"({len(unknown)} such images); pass a labelled folder with --data DIR "
                "--per-class N, or name the class"
            )
    pixels = load_pixels(samples, transform)

    proto_root = prototype_data if prototype_data is not None else data
    proto_classes: list[str] = []
    if spec.kind == "prototype" and cam_method.uses_targets:
        if proto_root is None:
            raise ConfigError("--target prototype needs a labelled folder: --prototype-data DIR")
        wanted = [spec.class_name] if spec.class_name else [s.true_class for s in samples]
        proto_classes = sorted({c for c in wanted if c is not None})

    batches = list(range(0, len(samples), batch_size))
    show = sys.stderr.isatty() if progress is None else progress
    bar = console.Bar("grad-cam", len(models) * len(samples), unit="images", enabled=show)
    bar.start()
    columns = []
    try:
        for m, col_name in zip(models, col_names, strict=True):
            protos = (
                class_prototypes(
                    m,
                    proto_root,
                    proto_classes,
                    transform,
                    per_class=prototype_per_class,
                    exclude=[s.path for s in samples],
                )
                if proto_classes
                else {}
            )
            layers = _layers_for(m, target_layer, needs_probe)
            maps, pred, conf, explained, scores = [], [], [], [], []
            for i in batches:
                batch_s = samples[i : i + batch_size]
                pix = pixels[i : i + batch_size].to(m.device)
                logits = m.logits(pix) if m.classifier is not None else None
                if logits is not None:
                    p = logits.softmax(-1)
                    pred += [m.class_names[j] for j in p.argmax(-1).tolist()]
                    conf += p.max(-1).values.tolist()
                else:
                    pred += [None] * len(batch_s)
                    conf += [None] * len(batch_s)
                if cam_method.uses_targets:
                    targets, what, val = _batch_targets(m, spec, batch_s, pix, logits, protos)
                else:
                    targets, what = None, [f"activations ({method})"] * len(batch_s)
                    val = [None] * len(batch_s)
                use_classifier = spec.needs_probe and cam_method.uses_targets
                net = m.classifier if use_classifier else m.backbone
                maps.append(
                    compute_cam(
                        net,
                        m.normalise(pix),
                        targets,
                        backbone=m.backbone,
                        method=method,
                        target_layer=layers,
                        aug_smooth=aug_smooth,
                        eigen_smooth=eigen_smooth,
                    )
                )
                explained += what
                scores += val
                bar.advance(len(batch_s))
            columns.append(
                CheckpointMaps(
                    col_name, m.path, np.concatenate(maps), pred, conf, explained, scores, layers
                )
            )
    finally:
        bar.stop()
    result = GradCamResult(
        samples=samples,
        pixels=pixels.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32),
        columns=columns,
        method=method.lower(),
        target=target,
        target_layer=target_layer,
    )
    if out is not None:
        result.files = write_gradcam(result, out)
    return result
