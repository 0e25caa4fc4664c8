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
from fastdino_cli.eval.probe.fewshot import FewShotResult
from fastdino_cli.eval.probe.knn import KnnResult
from fastdino_cli.eval.probe.linear import LinearResult
from fastdino_cli.eval.probe.perclass import Confusion
from fastdino_cli.eval.probe.subsets import SubsetResult
from fastdino_cli.fileio import atomic_write, write_text
from fastdino_cli.rundir import PROBE_DIR, PROBE_JSON

if TYPE_CHECKING:
    import pandas as pd
    from torch import Tensor

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
    per_class: list[dict[str, Any]] = field(default_factory=list)
    """One record per class: ``class``, ``num_val``, ``linear`` and ``knn<k>`` top-1 (%)."""
    confusions: list[Confusion] = field(default_factory=list)
    few_shot: list[FewShotResult] = field(default_factory=list)
    subsets: list[SubsetResult] = field(default_factory=list)
    refit: dict[str, Any] | None = None
    """``--refit``: the chosen head retrained on all of train (``top1``, ``top5``, ``num_fit``)."""
    refit_head: tuple[Tensor, Tensor] | None = field(default=None, repr=False)
    """(weight, bias) of the refit head: the one stored in the checkpoint under ``--refit``."""

    def flat(self) -> dict[str, Any]:
        """One table row: plain columns, accuracies in %."""
        row: dict[str, Any] = {"model": self.name}
        for r in self.knn:
            row[f"knn{r.k}"] = round(r.top1, 2)
        best_k = max(self.knn, key=lambda r: r.k)
        row[f"knn{best_k.k}_top5"] = round(best_k.top5, 2)
        row["linear"] = round(self.linear.val_top1, 2)
        row["linear_top5"] = round(self.linear.val_top5, 2)
        if self.refit is not None:
            row["linear_refit"] = round(self.refit["top1"], 2)
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
            "per_class": self.per_class,
            "top_confusions": [c.to_dict() for c in self.confusions],
            "few_shot": [f.to_dict() for f in self.few_shot],
            "subsets": [s.to_dict() for s in self.subsets],
            "refit": self.refit,
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

    def few_shot_frame(self) -> pd.DataFrame:
        """One row per (model, shot count): mean and sample std over the tries of top-1 (%)."""
        import pandas as pd

        records = []
        for row in self.rows:
            for fs in row.few_shot:
                rec: dict[str, Any] = {
                    "model": row.name,
                    "shots": fs.shots,
                    "tries": len(fs.tries),
                    "num_train": fs.tries[0].num_train,
                }
                for name, (mean, std) in fs.stats().items():
                    rec[f"{name}_mean"], rec[f"{name}_std"] = round(mean, 2), round(std, 2)
                records.append(rec)
        frame = pd.DataFrame(records)
        # a k above a subset's size does not exist there (kNN caps it): its cells stay empty
        ks = sorted(
            {int(c[3:-5]) for c in frame.columns if c.startswith("knn") and c.endswith("_mean")}
        )
        order = ["model", "shots", "tries", "num_train"]
        order += [f"{name}_{stat}" for name in [*(f"knn{k}" for k in ks), "linear"]
                  for stat in ("mean", "std")]  # fmt: skip
        return frame[order] if len(frame) else frame

    def subsets_frame(self) -> pd.DataFrame:
        """One row per (model, --test folder): top-1 (%) with the logits restricted."""
        import pandas as pd

        records = []
        for row in self.rows:
            for sub in row.subsets:
                rec: dict[str, Any] = {
                    "model": row.name,
                    "test": sub.folder,
                    "images": sub.num_images,
                    "classes": sub.num_classes,
                }
                for r in sub.knn:
                    rec[f"knn{r.k}"] = round(r.top1, 2)
                rec["linear"] = round(sub.linear_top1, 2)
                rec["linear_top5"] = round(sub.linear_top5, 2)
                rec["linear_all_classes"] = round(sub.linear_top1_all_classes, 2)
                if sub.refit_top1 is not None:
                    rec["linear_refit"] = round(sub.refit_top1, 2)
                records.append(rec)
        return pd.DataFrame(records)

    def per_class_frame(self) -> pd.DataFrame:
        """One row per (model, class): val images and top-1 (%) of the linear head and kNN."""
        import pandas as pd

        return pd.DataFrame([{"model": r.name, **rec} for r in self.rows for rec in r.per_class])

    def confusions_frame(self) -> pd.DataFrame:
        """The top confusions of each model (cost: points of overall top-1 lost to the pair)."""
        import pandas as pd

        return pd.DataFrame(
            [{"model": r.name, **c.to_dict()} for r in self.rows for c in r.confusions]
        )


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


def details_path(ckpt_path: str | Path, name: str) -> Path:
    """``<checkpoint folder>/probe/<checkpoint stem>_<name>``: per-class files of one checkpoint."""
    ckpt_path = Path(ckpt_path)
    return ckpt_path.parent / PROBE_DIR / f"{ckpt_path.stem}_{name}"


def write_details(ckpt_path: Path, rows: list[ProbeRow]) -> list[Path]:
    """Per-class accuracy and top confusions of ``rows`` (one checkpoint) under ``probe/``."""
    one = ProbeReport(rows=rows)
    written = []
    for table, name in (("per_class", "per_class.csv"), ("confusions", "confusions.csv")):
        frame = getattr(one, f"{table}_frame")()
        if len(frame):
            written.append(write_frame_csv(frame, details_path(ckpt_path, name)))
    return written


def write_frame_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """One table as CSV, atomically."""
    return atomic_write(path, lambda f: frame.to_csv(f, index=False), text=True)


def write_table_csv(report: ProbeReport, path: str | Path) -> Path:
    """The comparison table (``ProbeReport.to_frame``) as CSV, atomically."""
    return write_frame_csv(report.to_frame(), path)


DETAIL_TABLES = ("few_shot", "subsets", "per_class", "confusions")
"""The tables beside ``--csv t.csv``: ``t_few_shot.csv``, ``t_subsets.csv``, ... (when measured)."""


def detail_csv_path(path: str | Path, table: str) -> Path:
    path = Path(path)
    return path.with_name(f"{path.stem}_{table}{path.suffix or '.csv'}")


def write_detail_csvs(report: ProbeReport, path: str | Path) -> list[Path]:
    """Every detail table that holds rows, beside the comparison table ``path``."""
    written = []
    for table in DETAIL_TABLES:
        frame = getattr(report, f"{table}_frame")()
        if len(frame):
            written.append(write_frame_csv(frame, detail_csv_path(path, table)))
    return written


def format_table(report: ProbeReport) -> str:
    """Accuracy table (one row per model), then the invariance table when it was measured."""
    frame = report.to_frame()
    inv = [c for c in frame.columns if str(c).startswith("inv_")]
    acc = [c for c in frame.columns if c not in inv]
    parts = [_rich_table(frame[acc]), LEGEND]
    if inv:
        renamed = frame[["model", *inv]].rename(columns={c: c[4:] for c in inv})
        parts += ["", _rich_table(renamed, title="view invariance (mean cosine between views)")]
    few = report.few_shot_frame()
    if len(few):
        shown = few[["model", "shots", "tries", "num_train"]].copy()
        for col in [c[:-5] for c in few.columns if c.endswith("_mean")]:
            pairs = zip(few[f"{col}_mean"], few[f"{col}_std"], strict=True)
            shown[col] = ["-" if m != m else f"{m:.2f} ± {s:.2f}" for m, s in pairs]
        parts += ["", _rich_table(shown, title="few-shot top-1 (%), mean ± std over tries")]
        parts.append(
            "std: sample std (n-1); linear: the chosen head's blocks/avgpool/lr trained on the "
            "subset with its own number of SGD steps; -: k above the subset size"
        )
    subs = report.subsets_frame()
    if len(subs):
        title = "--test folders: top-1 (%) with the logits restricted to their classes"
        parts += ["", _rich_table(subs, title=title)]
    conf = report.confusions_frame()
    if len(conf):
        trained = {r.name for r in report.rows if not r.random_init}
        conf = conf[conf["model"].isin(trained)].round({"share_of_class": 1, "cost": 2})
        parts += ["", _rich_table(conf, title="top confusions on val (linear head)")]
        parts.append(
            "share_of_class: % of the true class's val images; cost: points of top-1 lost to "
            "the pair"
        )
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
