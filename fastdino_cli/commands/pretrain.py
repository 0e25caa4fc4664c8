"""`fastdino pretrain`: pretrain a ViT with DINOv2 and the FastDINOv2 curriculum."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from fastdino_cli.commands._common import (
    PASS_THROUGH,
    ConfigFileOpt,
    JsonOpt,
    OverridesArg,
    PresetOpt,
    examples,
)
from fastdino_cli.config import resolve_config
from fastdino_cli.errors import ConfigError
from fastdino_cli.rundir import CHECKPOINT
from fastdino_cli.train import launch

EXAMPLES = examples(
    "fastdino pretrain --preset demo                    # the curriculum on the demo data, CPU",
    "fastdino pretrain --preset vitb16-in1k --gpus 8 data.train=/datasets/in1k/train "
    "--out runs/b16",
    "fastdino pretrain --out runs/b16 --resume          # continue a run from its config.yaml",
)


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
            "with FSDP2 (several machines: see docs/scaling-out.md); with --plan, the GPUs "
            "the per-GPU batch is planned for (default 1).",
        ),
    ] = None,
    overrides: OverridesArg = None,
    plan: Annotated[
        bool,
        typer.Option(
            "--plan", help="Print steps, crops, FLOPs and peak memory per stage; train nothing."
        ),
    ] = False,
    compare: Annotated[
        str | None,
        typer.Option("--compare", help="With --plan: another preset, and the FLOPs ratio."),
    ] = None,
    gpu_mem: Annotated[
        float | None,
        typer.Option(
            "--gpu-mem",
            help="With --plan: memory per GPU in GiB (e.g. 80); says whether the per-GPU "
            "batch fits and what would.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Pretrain a ViT with DINOv2 and the FastDINOv2 curriculum (resumes an existing run)."""
    items = list(overrides or [])
    if out is not None:
        items.append(f"train.output_dir={out}")
    if preset is None and config is None:
        cfg = _stored_run_config(out, items, resume)
    else:
        cfg = resolve_config(preset, config, items)
    if plan or compare or as_json or gpu_mem is not None:
        _plan(cfg, plan, compare, as_json, gpus, gpu_mem)
        return
    if gpus is not None and gpus > 1 and not launch.already_launched():
        cfg.batch(gpus)  # an indivisible global batch: one line before any process starts
        args = _pretrain_args(preset, config, out, resume, force_config, overrides)
        launch.relaunch(Path(cfg.train.output_dir), gpus, args)
        return
    from fastdino_cli.train.distributed import shutdown  # torch: only once the config is valid
    from fastdino_cli.train.loop import pretrain

    result = pretrain(cfg, resume=True if resume else None, force_config=force_config)
    shutdown()
    if result.stopped == "sigint":  # Ctrl-C: checkpointed; exit as an interrupted command does
        if launch.rank() == 0:
            args = _pretrain_args(preset, config, out, resume, force_config, overrides)
            typer.echo(
                f"fastdino: interrupted at step {result.steps_done}; resume with: "
                f"{_command_line(args, gpus)}",
                err=True,
            )
        raise typer.Exit(130)
    if launch.rank() != 0:  # one summary line per run, not one per process
        return
    where = result.final_checkpoint or (result.run_dir / CHECKPOINT)
    typer.echo(
        f"{result.stopped}: {result.steps_done}/{result.total_steps} steps; checkpoint {where}"
    )


def _stored_run_config(out: Path | None, items: list[str], resume: bool):
    """The config of the run in ``--out`` (its ``config.yaml``) with ``items`` on top: what
    ``pretrain --out RUN_DIR`` continues without --preset / --config."""
    from fastdino_cli import rundir as rd
    from fastdino_cli.config import validate_config

    if out is None:
        raise ConfigError(
            "pass --preset NAME (see `fastdino presets list`) or --config FILE to start a run, "
            "or --out RUN_DIR to continue one"
        )
    rd.check_run_dir_path(out)
    stored = rd.read_stored_config(out)
    if stored is None:
        why = "it does not exist" if not out.exists() else f"it holds no {rd.CONFIG}"
        if resume:
            raise ConfigError(
                f"nothing to resume in {out}: {why}; check the path, or start a run there "
                "with --preset NAME"
            )
        raise ConfigError(
            f"--out {out} holds no run to continue ({why}); pass --preset NAME (see "
            "`fastdino presets list`) or --config FILE to start one"
        )
    base = rd.resolve_stored_paths(out, stored)
    try:
        validate_config(base)
    except ConfigError as e:
        raise ConfigError(
            f"{out / rd.CONFIG} is not a valid run config: {e}; restore it, or pass --preset "
            "NAME (or --config FILE) to say what the run is"
        ) from None
    return _overlay(base, items)


def _plan(
    cfg, plan: bool, compare: str | None, as_json: bool, gpus: int | None, gpu_mem=None
) -> None:
    from fastdino_cli.train.memory import plan_memory, render_memory
    from fastdino_cli.train.plan import plan_run, render_plan

    if not plan:
        raise ConfigError("--compare, --json and --gpu-mem only apply with --plan")
    other = resolve_config(compare) if compare else None
    result = plan_run(cfg, other, gpus=gpus or 1)
    memory = plan_memory(cfg, gpus or 1, gpu_mem)
    if as_json:
        typer.echo(json.dumps({**result.to_dict(), "memory": memory.to_dict()}, indent=2))
    else:
        typer.echo(render_plan(result) + "\n\n" + render_memory(memory, cfg))


def _command_line(args: list[str], gpus: int | None) -> str:
    """``fastdino pretrain ARGS`` as a shell line (with the --gpus the run was launched with)."""
    import shlex

    if gpus is None and os.environ.get(launch.GUARD) == "1":  # our own relaunch's child
        gpus = int(os.environ.get("WORLD_SIZE", "1"))
    extra = ["--gpus", str(gpus)] if gpus and gpus > 1 else []
    return shlex.join(["fastdino", "pretrain", *args, *extra])


def _pretrain_args(preset, config, out, resume, force_config, overrides) -> list[str]:
    """The same command line for the launched processes, without ``--gpus``."""
    args = ["--preset", preset] if preset else []
    args += ["--config", str(config)] if config else []
    args += ["--out", str(out)] if out else []
    args += ["--resume"] if resume else []
    args += ["--force-config"] if force_config else []
    return [*args, *(overrides or [])]


def _overlay(data: dict, items: list[str]):
    from fastdino_cli.config import apply_overrides, validate_config

    return validate_config(apply_overrides(data, items))


def register(app: typer.Typer) -> None:
    app.command("pretrain", context_settings=PASS_THROUGH, epilog=EXAMPLES)(pretrain_command)
