"""`fastdino pretrain`: pretrain a ViT with DINOv2 and the FastDINOv2 curriculum."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fastdino_cli.commands._common import (
    PASS_THROUGH,
    ConfigFileOpt,
    JsonOpt,
    OverridesArg,
    PresetOpt,
)
from fastdino_cli.config import load_config_yaml, resolve_config
from fastdino_cli.errors import ConfigError
from fastdino_cli.train import launch
from fastdino_cli.train.distributed import shutdown

EXAMPLES = """Examples:

  fastdino pretrain --preset demo                          # both curriculum stages, CPU

  fastdino pretrain --preset vitb16-in1k data.train=/datasets/imagenet/train

  fastdino pretrain --out runs/demo --resume               # continue a run (config.yaml)

  fastdino pretrain --preset vitb16-in1k --gpus 8 data.train=...   # FSDP2 on 8 GPUs

  fastdino pretrain --preset vitb16-in1k --plan --compare vitb16-in1k-dinov2   # FLOPs, no data
"""


def pretrain_command(
    preset: PresetOpt = None,
    config: ConfigFileOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run directory (train.output_dir).")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Require an existing run in --out and continue it."),
    ] = False,
    force_config: Annotated[
        bool,
        typer.Option("--force-config", help="Resume even if the config differs from the run's."),
    ] = False,
    gpus: Annotated[
        int | None,
        typer.Option(
            "--gpus",
            min=1,
            help="GPUs on this machine: N > 1 re-runs the command under `accelerate launch` "
            "with FSDP2 (several machines: see README 'Scaling out'); with --plan, the GPUs "
            "the totals assume (default 1).",
        ),
    ] = None,
    overrides: OverridesArg = None,
    plan: Annotated[
        bool,
        typer.Option("--plan", help="Print steps, crops and FLOPs per stage; train nothing."),
    ] = False,
    compare: Annotated[
        str | None,
        typer.Option("--compare", help="With --plan: another preset, and the FLOPs ratio."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Pretrain a ViT with DINOv2 and the FastDINOv2 curriculum (resumes an existing run)."""
    from fastdino_cli.train.loop import pretrain

    items = list(overrides or [])
    if out is not None:
        items.append(f"train.output_dir={out}")
    if preset is None and config is None:
        if out is None or not (out / "config.yaml").is_file():
            raise ConfigError("pass --preset NAME (see `fastdino presets list`) or --out RUN_DIR")
        from fastdino_cli.rundir import resolve_stored_paths

        base = load_config_yaml((out / "config.yaml").read_text())
        cfg = _overlay(resolve_stored_paths(out, base.to_dict()), items)
    else:
        cfg = resolve_config(preset, config, items)
    if plan or compare or as_json:
        _plan(cfg, plan, compare, as_json, gpus)
        return
    if gpus is not None and gpus > 1 and not launch.already_launched():
        args = _pretrain_args(preset, config, out, resume, force_config, overrides)
        launch.relaunch(Path(cfg.train.output_dir), gpus, args)
        return
    result = pretrain(cfg, resume=True if resume else None, force_config=force_config)
    shutdown()
    if launch.rank() != 0:  # one summary line per run, not one per process
        return
    where = result.final_checkpoint or (result.run_dir / "checkpoint.pt")
    typer.echo(
        f"{result.stopped}: {result.steps_done}/{result.total_steps} steps; checkpoint {where}"
    )


def _plan(cfg, plan: bool, compare: str | None, as_json: bool, gpus: int | None) -> None:
    from fastdino_cli.train.plan import plan_run, render_plan

    if not plan:
        raise ConfigError("--compare and --json only apply with --plan")
    other = resolve_config(compare) if compare else None
    result = plan_run(cfg, other, gpus=gpus or 1)
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else render_plan(result))


def _pretrain_args(preset, config, out, resume, force_config, overrides) -> list[str]:
    """The same command line for the launched processes, without ``--gpus``."""
    args = ["--preset", preset] if preset else []
    args += ["--config", str(config)] if config else []
    args += ["--out", str(out)] if out else []
    args += ["--resume"] if resume else []
    args += ["--force-config"] if force_config else []
    return [*args, *(overrides or [])]


def _overlay(data: dict, items: list[str]):
    from fastdino_cli.config import apply_override, parse_override, validate_config

    for item in items:
        key, value = parse_override(item)
        data = apply_override(data, key, value)
    return validate_config(data)


def register(app: typer.Typer) -> None:
    app.command("pretrain", context_settings=PASS_THROUGH, epilog=EXAMPLES)(pretrain_command)
