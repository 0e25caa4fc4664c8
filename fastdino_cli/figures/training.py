"""Training curves from ``metrics.jsonl``: losses, learning rate and crop size per step.

``load_metrics`` returns a DataFrame (one row per logged step); ``plot_metrics`` draws three
stacked panels sharing the step axis and marks every curriculum stage switch with a dashed line.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pandas as pd

from fastdino_cli import rundir as rd
from fastdino_cli.errors import ConfigError, DataError, FastdinoError
from fastdino_cli.eval.outputs import check_output_dir
from fastdino_cli.fileio import save_figure

LOSS_TERMS = (
    "loss", "dino_global", "dino_local", "ibot", "koleo", "distill_cls", "distill_patch"
)  # fmt: skip
"""Every loss term a run may log (feature distillation logs the last two); absent ones are
skipped."""


def load_metrics(run_dir: str | Path) -> pd.DataFrame:
    """``RUN_DIR/metrics.jsonl`` as a DataFrame sorted by step (torn lines are skipped).

    A file that is not a metrics log (not text, or records without a numeric ``step``) is a
    one-line ``DataError`` naming the file and the line.
    """
    path = Path(run_dir)
    path = path / rd.METRICS if path.is_dir() else path
    if not path.is_file():
        raise DataError(
            f"{path} does not exist; pass a run directory written by `fastdino pretrain`"
        )
    rows = rd.read_metrics(path, strict=True)
    if not rows:
        raise DataError(f"{path} holds no metrics yet")
    return pd.DataFrame(rows).sort_values("step").reset_index(drop=True)


FIGURE_SIGNATURES: dict[str, tuple[bytes, ...]] = {
    ".png": (b"\x89PNG\r\n\x1a\n",),
    ".jpg": (b"\xff\xd8\xff",),
    ".jpeg": (b"\xff\xd8\xff",),
    ".pdf": (b"%PDF",),
    ".svg": (b"<?xml", b"<svg"),
}
"""The figure formats ``--out`` may name, and how an existing file of each kind starts."""


def check_figure_path(path: str | Path, flag: str = "--out") -> Path:
    """``path`` if a figure may be written there: an image suffix, and no file there that is not
    already an image of that kind (a checkpoint or a log is never overwritten)."""
    path = Path(path)
    kinds = ", ".join(FIGURE_SIGNATURES)
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give a file name such as {path / 'a.png'}")
    if path.suffix.lower() not in FIGURE_SIGNATURES:
        raise ConfigError(
            f"{flag} {path}: a figure is written as {kinds}; give a file name with one of "
            "these suffixes (nothing was written)"
        )
    check_output_dir(path.parent, flag)
    if path.exists():
        with open(path, "rb") as f:
            head = f.read(16)
        if not head.startswith(FIGURE_SIGNATURES[path.suffix.lower()]):
            raise ConfigError(
                f"{flag} {path} exists and is not a {path.suffix.lower()} image; it was left as "
                "it is: choose another file name"
            )
    return path


def stage_switches(df: pd.DataFrame) -> list[int]:
    """Steps at which the logged stage changes."""
    if "stage" not in df:
        return []
    changed = df["stage"].ne(df["stage"].shift()) & df.index.to_series().gt(0)
    return df.loc[changed, "step"].astype(int).tolist()


def plot_metrics(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the training-curve PNG (default ``RUN_DIR/metrics.png``) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    out = Path(out) if out else (run_dir if run_dir.is_dir() else run_dir.parent) / "metrics.png"
    check_figure_path(out)
    df = load_metrics(run_dir)
    for col in (*LOSS_TERMS, "lr", "momentum", "global_crops_size", "local_crops_size"):
        if col in df:  # a hand-edited value plots as a gap, not as a category axis
            df[col] = pd.to_numeric(df[col], errors="coerce")
    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True, constrained_layout=True)
    ax = axes[0]
    for term in LOSS_TERMS:
        if term in df:
            ax.plot(df["step"], df[term], label=term, lw=1.8 if term == "loss" else 1.0)
    ax.set_ylabel("loss")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(ncol=sum(t in df for t in LOSS_TERMS), fontsize=8, loc="lower left")
    ax = axes[1]
    if "lr" in df:
        ax.plot(df["step"], df["lr"], color="tab:purple", label="lr")
    ax.set_ylabel("learning rate")
    if "momentum" in df:
        twin = ax.twinx()
        twin.plot(df["step"], df["momentum"], color="tab:gray", lw=1, label="teacher momentum")
        twin.set_ylabel("teacher momentum", color="tab:gray")
    ax = axes[2]
    if "global_crops_size" in df:
        ax.step(df["step"], df["global_crops_size"], where="post", label="global crop")
    if "local_crops_size" in df and df["local_crops_size"].notna().any():
        ax.step(df["step"], df["local_crops_size"], where="post", label="local crop")
    ax.set_ylabel("crop size (px)")
    ax.set_xlabel("step")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left")
    for s in stage_switches(df):
        for a in axes:
            a.axvline(s, color="k", ls="--", lw=0.8, alpha=0.6)
        axes[0].annotate(
            "stage switch",
            (s, 1.0),
            xycoords=("data", "axes fraction"),
            fontsize=8,
            ha="left",
            va="top",
        )
    name = run_dir.name
    with contextlib.suppress(FastdinoError):  # a damaged config only costs the title
        stored = rd.read_stored_config(run_dir if run_dir.is_dir() else run_dir.parent)
        name = (stored or {}).get("preset") or name
    title = f"{name}: {int(df['step'].iloc[-1]) + 1} steps"
    fig.suptitle(title)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, out, dpi=110)
    plt.close(fig)
    return out
