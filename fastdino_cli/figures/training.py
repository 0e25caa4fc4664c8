"""Training curves from ``metrics.jsonl``: losses, learning rate and crop size per step.

``load_metrics`` returns a DataFrame (one row per logged step); ``plot_metrics`` draws three
stacked panels sharing the step axis and marks every curriculum stage switch with a dashed line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from fastdino_cli.errors import DataError
from fastdino_cli.fileio import save_figure

LOSS_TERMS = ("loss", "dino_global", "dino_local", "ibot", "koleo")


def load_metrics(run_dir: str | Path) -> pd.DataFrame:
    """``RUN_DIR/metrics.jsonl`` as a DataFrame sorted by step (torn last lines are skipped)."""
    path = Path(run_dir)
    path = path / "metrics.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise DataError(
            f"{path} does not exist; pass a run directory written by `fastdino pretrain`"
        )
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    if not rows:
        raise DataError(f"{path} holds no metrics yet")
    return pd.DataFrame(rows).sort_values("step").reset_index(drop=True)


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

    df = load_metrics(run_dir)
    run_dir = Path(run_dir)
    out = Path(out) if out else (run_dir if run_dir.is_dir() else run_dir.parent) / "metrics.png"
    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True, constrained_layout=True)
    ax = axes[0]
    for term in LOSS_TERMS:
        if term in df:
            ax.plot(df["step"], df[term], label=term, lw=1.8 if term == "loss" else 1.0)
    ax.set_ylabel("loss")
    ax.legend(ncol=len(LOSS_TERMS), fontsize=8, loc="lower left")
    ax = axes[1]
    ax.plot(df["step"], df["lr"], color="tab:purple", label="lr")
    ax.set_ylabel("learning rate")
    if "momentum" in df:
        twin = ax.twinx()
        twin.plot(df["step"], df["momentum"], color="tab:gray", lw=1, label="teacher momentum")
        twin.set_ylabel("teacher momentum", color="tab:gray")
    ax = axes[2]
    ax.step(df["step"], df["global_crops_size"], where="post", label="global crop")
    if "local_crops_size" in df and df["local_crops_size"].notna().any():
        ax.step(df["step"], df["local_crops_size"], where="post", label="local crop")
    ax.set_ylabel("crop size (px)")
    ax.set_xlabel("step")
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
    cfg_path = (run_dir if run_dir.is_dir() else run_dir.parent) / "config.yaml"
    if cfg_path.is_file():
        import yaml

        name = (yaml.safe_load(cfg_path.read_text()) or {}).get("preset") or name
    title = f"{name}: {int(df['step'].iloc[-1]) + 1} steps"
    fig.suptitle(title)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, out, dpi=110)
    plt.close(fig)
    return out
