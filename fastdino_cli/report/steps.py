"""The evaluation steps of a run directory: what is done, what is missing, how to run it.

Shared by ``fastdino report --run-missing`` and ``fastdino demo``: both list a run's steps
(probe, corrupt-eval, fourier-heatmap, gradcam), skip the ones whose outputs exist, are newer
than ``final.pt`` and match the requested settings, and run the rest through the same library
functions the subcommands call, writing into the run directory (layout in ``report.tables``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastdino_cli.report.tables import CHECKPOINT, CORRUPT_DIR, FOURIER_DIR, GRADCAM_DIR


@dataclass
class EvalSettings:
    """How the missing evaluations run (the subcommands' defaults unless said otherwise)."""

    train: Path | None = None
    """Labelled train folder for the probe (None: found beside the run's ``data.train``)."""
    val: Path | None = None
    """Labelled val folder for every evaluation (None: ``val`` beside ``data.train``)."""
    probe_epochs: int = 10
    baseline_random: bool = True
    """Also probe the same architecture at random init (the floor every run should beat)."""
    corruptions: str = "all"
    severities: str = "1-5"
    corrupt_max_per_class: int | None = None
    fourier_size: int | None = None
    fourier_window: int | None = None
    fourier_images_per_class: int = 5
    gradcam_per_class: int = 1
    workers: int = 0
    device: str = "auto"


@dataclass
class Step:
    """One unit of work: ``done()`` checks its outputs, ``run()`` produces them."""

    name: str
    done: Callable[[], bool]
    run: Callable[[], Any]
    command: str
    """The equivalent command line (what a missing section tells the user to run)."""


def labelled_data(run_dir: Path, settings: EvalSettings | None = None) -> tuple[Path, Path] | None:
    """(train, val) folders: the settings', else ``train``/``val`` beside the run's data.train."""
    if settings and settings.train and settings.val:
        return Path(settings.train), Path(settings.val)
    cfg_path = Path(run_dir) / "config.yaml"
    if not cfg_path.is_file():
        return None
    from fastdino_cli.config import load_config_yaml
    from fastdino_cli.data.demo import resolve_data_root

    value = load_config_yaml(cfg_path.read_text()).data.train
    if not value:
        return None
    train = resolve_data_root(value, "train") if value == "demo" else Path(value)
    val = train.parent / "val"
    if train.name == "train" and val.is_dir():
        return train, val
    return None


def _newer(path: Path, than: Path) -> bool:
    return path.is_file() and than.is_file() and path.stat().st_mtime >= than.stat().st_mtime


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def commands(run_dir: Path, settings: EvalSettings | None = None) -> dict[str, str]:
    """The command line that fills each section of one run directory."""
    s = settings or EvalSettings()
    data = labelled_data(run_dir, s)
    train, val = (str(data[0]), str(data[1])) if data else ("TRAIN_DIR", "VAL_DIR")
    ckpt = Path(run_dir) / CHECKPOINT
    fourier = f" --size {s.fourier_size}" if s.fourier_size else ""
    fourier += f" --window {s.fourier_window}" if s.fourier_window else ""
    return {
        "pretrain": f"fastdino pretrain --out {run_dir}",
        "probe": f"fastdino probe {ckpt} --train {train} --val {val}"
        + (" --baseline-random" if s.baseline_random else ""),
        "corrupt": f"fastdino corrupt-eval {ckpt} --val {val} --corruptions {s.corruptions} "
        f"--severities {s.severities} --out {Path(run_dir) / CORRUPT_DIR}",
        "fourier": f"fastdino fourier-heatmap {ckpt} --data {val}{fourier} "
        f"--images-per-class {s.fourier_images_per_class} --out {Path(run_dir) / FOURIER_DIR}",
        "gradcam": f"fastdino gradcam {ckpt} --data {val} --per-class {s.gradcam_per_class} "
        f"--out {Path(run_dir) / GRADCAM_DIR}",
    }


def evaluation_steps(run_dir: Path, label: str, settings: EvalSettings) -> list[Step]:
    """probe, corrupt-eval, fourier-heatmap and gradcam of one run, in dependency order."""
    run_dir = Path(run_dir)
    ckpt = run_dir / CHECKPOINT
    cmd = commands(run_dir, settings)
    s = settings

    def data() -> tuple[Path, Path]:
        from fastdino_cli.errors import ConfigError

        found = labelled_data(run_dir, s)
        if found is None:
            raise ConfigError(
                f"cannot tell the labelled train/val folders of {run_dir}; pass --data DIR "
                "(a folder holding train/ and val/ with class sub-folders)"
            )
        return found

    def probe_done() -> bool:
        rows = _read_json(run_dir / "probe.json").get(CHECKPOINT) or []
        has_random = any(r.get("random_init") for r in rows)
        return (
            _newer(run_dir / "probe.json", ckpt)
            and bool(rows)
            and (has_random or not s.baseline_random)
        )

    def probe() -> Any:
        from fastdino_cli.eval.probe.run import run_probe

        train, val = data()
        return run_probe(
            [ckpt], train, val, epochs=s.probe_epochs, baseline_random=s.baseline_random,
            device=s.device, num_workers=s.workers,
        )  # fmt: skip

    def corrupt_done() -> bool:
        from fastdino_cli.eval.corruption.registry import parse_corruptions, parse_severities

        path = run_dir / CORRUPT_DIR / "results.json"
        meta = _read_json(path).get("meta") or {}
        return (
            _newer(path, ckpt)
            and _newer(path, run_dir / "probe.json")
            and meta.get("corruptions") == parse_corruptions(s.corruptions)
            and meta.get("severities") == parse_severities(s.severities)
        )

    def corrupt() -> Any:
        from fastdino_cli.eval.corruption.run import corrupt_eval
        from fastdino_cli.figures.corruption import write_report

        _, val = data()
        device = "cpu" if s.device == "auto" else s.device
        result = corrupt_eval(
            [ckpt], val=val, corruptions=s.corruptions, severities=s.severities,
            workers=s.workers, device=device, max_per_class=s.corrupt_max_per_class,
        )  # fmt: skip
        return write_report(result, run_dir / CORRUPT_DIR)

    def fourier_done() -> bool:
        path = run_dir / FOURIER_DIR / Path(CHECKPOINT).stem / "meta.json"
        meta = _read_json(path)
        size_ok = s.fourier_size is None or meta.get("size") == s.fourier_size
        return (
            _newer(path, ckpt)
            and _newer(path, run_dir / "probe.json")
            and size_ok
            and meta.get("window") == s.fourier_window
            and meta.get("images_per_class") == s.fourier_images_per_class
        )

    def fourier() -> Any:
        from fastdino_cli.eval.fourier.run import run_fourier_heatmaps

        _, val = data()
        return run_fourier_heatmaps(
            [ckpt], val, run_dir / FOURIER_DIR, size=s.fourier_size, window=s.fourier_window,
            images_per_class=s.fourier_images_per_class, device=s.device, progress=False,
        )  # fmt: skip

    def gradcam_done() -> bool:
        path = run_dir / GRADCAM_DIR / "gradcam.json"
        return _newer(path, ckpt) and _newer(path, run_dir / "probe.json")

    def gradcam() -> Any:
        from fastdino_cli.eval.gradcam.run import run_gradcam

        _, val = data()
        return run_gradcam(
            [ckpt], data=val, per_class=s.gradcam_per_class, names=[label], device=s.device,
            progress=False, out_dir=run_dir / GRADCAM_DIR,
        )  # fmt: skip

    return [
        Step(f"probe {label}", probe_done, probe, cmd["probe"]),
        Step(f"corrupt-eval {label}", corrupt_done, corrupt, cmd["corrupt"]),
        Step(f"fourier-heatmap {label}", fourier_done, fourier, cmd["fourier"]),
        Step(f"gradcam {label}", gradcam_done, gradcam, cmd["gradcam"]),
    ]
