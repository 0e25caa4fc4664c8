"""The Grad-CAM comparison grid: one row per image, the input then one overlay per checkpoint.

Drawing only; the numbers come from ``eval.gradcam.run.run_gradcam`` (or the files it wrote,
read back with ``eval.gradcam.result.load_gradcam``). The figure is built on a
bare ``Figure`` + Agg canvas (no pyplot state), so it works headless and in threads.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pytorch_grad_cam.utils.image import show_cam_on_image

from fastdino_cli.fileio import save_figure

if TYPE_CHECKING:
    from fastdino_cli.eval.gradcam.result import GradCamResult

GRID = "gradcam.png"
"""The grid's file name in a ``fastdino gradcam --out`` folder."""


def overlay(image: np.ndarray, cam: np.ndarray, image_weight: float = 0.5) -> np.ndarray:
    """JET heatmap of ``cam`` (H, W in [0, 1]) blended over ``image`` (H, W, 3 in [0, 1])."""
    img = np.clip(image.astype(np.float32), 0.0, 1.0)
    mask = np.clip(cam.astype(np.float32), 0.0, 1.0)
    return show_cam_on_image(img, mask, use_rgb=True, image_weight=image_weight)


def _short(text: str, n: int = 28) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _layers_label(result) -> str:
    """The target layer(s) for the title: averaged layers named once when all columns agree."""
    lists = {tuple(c.target_layers) for c in result.columns if c.target_layers}
    if len(lists) != 1:
        return str(result.target_layer)
    (layers,) = lists
    return layers[0] if len(layers) == 1 else f"{', '.join(layers)} (maps averaged)"


def _cell_title(col, i: int) -> str:
    lines = []
    pred = col.predicted[i]
    if pred is not None:
        conf = col.confidence[i]
        lines.append(f"pred {_short(pred, 18)}" + (f" ({conf:.2f})" if conf is not None else ""))
    what = col.explained[i]
    if not (pred is not None and what == f"class {pred}"):
        score = col.score[i]
        lines.append(_short(f"map: {what}", 26) + (f" {score:.2f}" if score is not None else ""))
    return "\n".join(lines)


def plot_gradcam_grid(
    result: GradCamResult,
    path: str | Path,
    *,
    cell_inches: float = 2.0,
    dpi: int = 110,
    image_weight: float = 0.5,
) -> Path:
    """Save the grid PNG; titles carry checkpoint names, predicted and true classes."""
    n, ncols = len(result.samples), 1 + len(result.columns)
    fig = Figure(figsize=(max(3.0, cell_inches * ncols), cell_inches * 1.18 * n + 0.8), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, ncols, squeeze=False)
    for r, sample in enumerate(result.samples):
        image = result.pixels[r]
        ax = axes[r, 0]
        ax.imshow(image)
        true = f"true {sample.true_class}" if sample.true_class else "true ?"
        ax.set_title(f"{_short(sample.path.name, 22)}\n{true}", fontsize=7)
        if r == 0:
            ax.text(0.5, 1.45, "input", transform=ax.transAxes, ha="center", fontsize=9)
        for c, col in enumerate(result.columns, start=1):
            ax = axes[r, c]
            ax.imshow(overlay(image, col.maps[r], image_weight))
            ax.set_title(_cell_title(col, r), fontsize=7)
            if r == 0:
                ax.text(
                    0.5,
                    1.45,
                    _short(col.name, 30),
                    transform=ax.transAxes,
                    ha="center",
                    fontsize=9,
                    fontweight="bold",
                )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"{result.method} at {_layers_label(result)}, target {result.target}\n"
        "each map scaled to [0, 1] on its own",
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / fig.get_figheight()))
    return save_figure(fig, path)


def draw_gradcam(result: GradCamResult, out_dir: str | Path) -> Path:
    """The grid of one ``fastdino gradcam`` run, as ``out_dir/gradcam.png``."""
    return plot_gradcam_grid(result, Path(out_dir) / GRID)
