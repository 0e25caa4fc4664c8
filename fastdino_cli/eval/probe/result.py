"""What ``run_probe`` measured: one row per model, the comparison table and ``probe.json``.

:class:`ProbeReport` is what :func:`fastdino_cli.eval.probe.run.run_probe` returns;
:func:`format_table` is what ``fastdino probe`` prints, :func:`write_table_csv` its ``--csv``
and :func:`write_probe_json` the ``probe.json`` written beside each checkpoint (read back by
the report).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastdino_cli.eval.features import FeatureRecipe
from fastdino_cli.eval.probe.knn import KnnResult
from fastdino_cli.eval.probe.linear import LinearResult
from fastdino_cli.fileio import atomic_write, write_text
from fastdino_cli.rundir import PROBE_JSON

if TYPE_CHECKING:
    import pandas as pd

LEGEND = (
    "accuracies in %; linear: the head chosen on the held-out part of --train, evaluated once on "
    "--val; best_on_val*: the best head chosen on val (the reference protocol, optimistic)"
)


@dataclass
class ProbeRow:
    """Every number measured for one model (a checkpoint, or its random-init twin)."""

    name: str
    checkpoint: str
    random_init: bool
    recipe: FeatureRecipe
    num_train: int
    num_val: int
    num_classes: int
    knn: list[KnnResult]
    linear: LinearResult
    invariance: dict[str, float] | None = None
    features_cached: bool = False
    seconds: float = 0.0
    stored_in: str | None = None

    def flat(self) -> dict[str, Any]:
        """One table row: plain columns, accuracies in %."""
        row: dict[str, Any] = {"model": self.name}
        for r in self.knn:
            row[f"knn{r.k}"] = round(r.top1, 2)
        best_k = max(self.knn, key=lambda r: r.k)
        row[f"knn{best_k.k}_top5"] = round(best_k.top5, 2)
        row["linear"] = round(self.linear.val_top1, 2)
        row["linear_top5"] = round(self.linear.val_top5, 2)
        row["heldout"] = round(self.linear.holdout_top1, 2)
        row["best_on_val*"] = round(self.linear.best_on_val_top1, 2)
        row["head"] = self.linear.spec.label()
        for strategy, value in (self.invariance or {}).items():
            row[f"inv_{strategy}"] = round(value, 4)
        return row

    def to_dict(self) -> dict[str, Any]:
        lin = self.linear
        return {
            "name": self.name,
            "checkpoint": self.checkpoint,
            "random_init": self.random_init,
            "recipe": self.recipe.to_dict(),
            "num_train": self.num_train,
            "num_val": self.num_val,
            "num_classes": self.num_classes,
            "knn": {str(r.k): {"top1": r.top1, "top5": r.top5} for r in self.knn},
            "linear": {
                "top1": lin.val_top1,
                "top5": lin.val_top5,
                "holdout_top1": lin.holdout_top1,
                "head": {
                    "n_last_blocks": lin.spec.n_last_blocks,
                    "avgpool": lin.spec.avgpool,
                    "lr": lin.spec.lr,
                },
                "num_fit": lin.num_fit,
                "num_holdout": lin.num_holdout,
                "best_on_val_top1_optimistic": lin.best_on_val_top1,
                "best_on_val_head": lin.best_on_val_spec.label(),
                "holdout_top1_per_head": dict(lin.holdout_table),
            },
            "invariance": self.invariance,
            "features_cached": self.features_cached,
            "seconds": round(self.seconds, 3),
            "stored_in": self.stored_in,
        }


@dataclass
class ProbeReport:
    """Rows of the comparison table (one per model) and how they were measured."""

    rows: list[ProbeRow]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """Accuracies in %; ``best_on_val*`` is the reference's optimistic head choice on val;
        ``inv_*`` are mean cosine similarities between views (``different-images``: scale)."""
        import pandas as pd

        return pd.DataFrame([r.flat() for r in self.rows])

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "rows": [r.to_dict() for r in self.rows]}


def write_probe_json(ckpt_path: Path, rows: list[ProbeRow]) -> Path:
    """``probe.json`` beside the checkpoint, keyed by checkpoint file name (other keys kept)."""
    target = ckpt_path.parent / PROBE_JSON
    data: dict[str, Any] = {}
    if target.is_file():
        try:
            data = json.loads(target.read_text())
        except (OSError, json.JSONDecodeError):
            data = {}
    data[ckpt_path.name] = [r.to_dict() for r in rows]
    return write_text(target, json.dumps(data, indent=2) + "\n")


def write_table_csv(report: ProbeReport, path: str | Path) -> Path:
    """The comparison table (``ProbeReport.to_frame``) as CSV, atomically."""
    frame = report.to_frame()
    return atomic_write(path, lambda f: frame.to_csv(f, index=False), text=True)


def format_table(report: ProbeReport) -> str:
    """Accuracy table (one row per model), then the invariance table when it was measured."""
    frame = report.to_frame()
    inv = [c for c in frame.columns if str(c).startswith("inv_")]
    acc = [c for c in frame.columns if c not in inv]
    parts = [_rich_table(frame[acc]), LEGEND]
    if inv:
        renamed = frame[["model", *inv]].rename(columns={c: c[4:] for c in inv})
        parts += ["", _rich_table(renamed, title="view invariance (mean cosine between views)")]
    return "\n".join(parts)


def _rich_table(frame: pd.DataFrame, title: str | None = None) -> str:
    import io

    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=None, header_style="bold")
    width = max(len(str(v)) for v in frame["model"]) if len(frame) else 5
    for col in frame.columns:
        if col == "model":
            table.add_column("model", min_width=min(width, 48), overflow="fold")
        else:
            table.add_column(str(col), justify="left" if col == "head" else "right")
    for _, row in frame.iterrows():
        table.add_row(*["-" if pd.isna(v) else str(v) for v in row.tolist()])
    buf = io.StringIO()
    # never crop numbers: a table wider than the terminal is left for the terminal to wrap
    Console(file=buf, width=4096, color_system=None, force_terminal=False).print(table)
    return "\n".join(line.rstrip() for line in buf.getvalue().rstrip("\n").splitlines())
