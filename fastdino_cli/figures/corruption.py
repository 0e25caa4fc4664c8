"""Figures for the corruption evaluation (matplotlib, Agg backend, PNG).

* :func:`plot_accuracy_bars`: top-1 per corruption, one bar per model (grouped), clean as a line;
* :func:`plot_severity_lines`: top-1 against severity, one panel per corruption group, one line
  per corruption (the mean of the group in bold) and one line style per model;
* :func:`plot_examples`: one image under every corruption at one severity (Figure 5 of the
  FastDINOv2 paper, after ImageNet-C's own overview figure).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastdino_cli.eval.corruption.registry import ALL, GROUPS, corrupt, corruption_rng
from fastdino_cli.eval.corruption.run import CorruptEvalResult
from fastdino_cli.fileio import save_figure


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy_bars(result: CorruptEvalResult, path: str | Path) -> Path:
    """Grouped bars: mean top-1 over the selected severities per corruption, per model."""
    plt = _plt()
    table = result.per_corruption("top1") * 100
    models = list(table.columns)
    n = len(models)
    x = np.arange(len(table.index))
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(8, 0.55 * len(x) * max(1, n / 2)), 4.2))
    colors = plt.cm.tab10.colors
    summary = result.summary.set_index("model")
    for i, model in enumerate(models):
        ax.bar(x - 0.4 + width * (i + 0.5), table[model], width, label=model, color=colors[i % 10])
        clean = summary.loc[model, "clean_top1"]
        if np.isfinite(clean):
            ax.axhline(clean * 100, color=colors[i % 10], ls="--", lw=1)
    ax.set_xticks(x, [c.replace("_", " ") for c in table.index], rotation=45, ha="right")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    levels = ",".join(str(s) for s in result.meta.get("severities", []))
    ax.set_title(f"Accuracy per corruption (mean over severities {levels}; dashed: clean)")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_severity_lines(result: CorruptEvalResult, path: str | Path) -> Path:
    """Top-1 vs severity, one panel per corruption group present in the result."""
    plt = _plt()
    cells = result.cells
    groups = [g for g in GROUPS if g in set(cells["group"])]
    models = list(result.summary["model"])
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, len(groups), figsize=(3.6 * len(groups), 3.4), squeeze=False)
    for ax, group in zip(axes[0], groups, strict=True):
        names = [c for c in GROUPS[group] if c in set(cells["corruption"])]
        for m, model in enumerate(models):
            mine = cells[(cells["model"] == model) & (cells["group"] == group)]
            for k, name in enumerate(names):
                rows = mine[mine["corruption"] == name].sort_values("severity")
                ax.plot(
                    rows["severity"],
                    rows["top1"] * 100,
                    styles[m % 4],
                    color=plt.cm.tab10.colors[k % 10],
                    marker="o",
                    ms=3,
                    label=name.replace("_", " ") if m == 0 else None,
                )
            mean = mine.groupby("severity")["top1"].mean() * 100
            ax.plot(mean.index, mean.values, styles[m % 4], color="black", lw=2.2)
        ax.set_title(group)
        ax.set_xlabel("severity")
        ax.set_xticks(sorted(set(cells["severity"])))
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    axes[0][0].set_ylabel("top-1 accuracy (%)")
    if len(models) > 1:
        key = ", ".join(f"{styles[m % 4]} {model}" for m, model in enumerate(models))
        fig.suptitle(f"line style per model: {key}; black: group mean", fontsize=9)
    else:
        fig.suptitle(f"{models[0]}: top-1 vs severity (black: group mean)", fontsize=9)
    return _save(fig, path)


def plot_examples(
    image: np.ndarray,
    path: str | Path,
    *,
    severity: int = 3,
    seed: int = 0,
    corruptions: list[str] | None = None,
    dpi: int = 110,
) -> Path:
    """One HxWx3 uint8 image, clean and under every corruption at ``severity``."""
    plt = _plt()
    names = ["clean"] + list(corruptions or ALL)
    cols = 5
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.35 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names + [None] * (rows * cols - len(names)), strict=True):
        ax.axis("off")
        if name is None:
            continue
        shown = (
            image if name == "clean" else corrupt(image, name, severity, _rng(seed, name, severity))
        )
        ax.imshow(shown)
        ax.set_title(name.replace("_", " "), fontsize=9)
    fig.suptitle(f"ImageNet-C corruptions at severity {severity}", fontsize=11)
    return _save(fig, path, dpi)


def _rng(seed: int, name: str, severity: int) -> np.random.Generator:
    return corruption_rng(seed, name, severity, 0)


def _save(fig, path: str | Path, dpi: int = 110) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    save_figure(fig, path, dpi=dpi)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write_report(
    result: CorruptEvalResult,
    out_dir: str | Path,
    *,
    figures: bool = True,
    example_image: str | Path | None = None,
    example_size: int = 224,
    example_severity: int = 3,
    seed: int = 0,
) -> dict[str, Path]:
    """CSV + JSON tables, the two accuracy figures and optionally the examples figure."""
    from PIL import Image

    from fastdino_cli.eval.corruption.data import center_crop_pil
    from fastdino_cli.eval.corruption.run import save_results

    out = Path(out_dir)
    paths = save_results(result, out)
    if figures:
        paths["bars"] = plot_accuracy_bars(result, out / "accuracy_per_corruption.png")
        paths["severity"] = plot_severity_lines(result, out / "accuracy_vs_severity.png")
    if example_image is not None:
        with Image.open(example_image) as img:
            crop = center_crop_pil(img, example_size)
        paths["examples"] = plot_examples(
            crop,
            out / f"examples_severity{example_severity}.png",
            severity=example_severity,
            seed=seed,
            corruptions=result.meta.get("corruptions"),
        )
    return paths


def first_clean_image(folder: str | Path | None) -> Path:
    """The first image of a labelled folder, for ``--examples`` without ``--example-image``."""
    from fastdino_cli.errors import DataError
    from fastdino_cli.eval.corruption.data import list_labelled_images

    if folder is None:
        raise DataError("--examples needs a clean image: give --example-image PATH or --clean DIR")
    return list_labelled_images(folder, max_per_class=1)[0].path
