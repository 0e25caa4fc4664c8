"""`fastdino presets list|show|reference`: the preset registry and the config keys."""

from __future__ import annotations

from typing import Annotated

import typer

from fastdino_cli.commands._common import ConfigFileOpt, OverridesArg, examples

app = typer.Typer(
    help="List presets, print resolved configs and the reference of every config key.",
    no_args_is_help=True,
    add_completion=False,
    epilog=examples(
        "fastdino presets list",
        "fastdino presets show vitb16-in1k optim.base_lr=1e-3   # one override",
        "fastdino presets reference > docs/config.md",
    ),
)


@app.command(
    "list",
    epilog=examples("fastdino presets list"),
)
def list_command() -> None:
    """Print every shipped preset with its one-line description."""
    from fastdino_cli.config import list_presets

    presets = list_presets()
    width = max(len(n) for n in presets)
    for name, desc in presets.items():
        typer.echo(f"{name.ljust(width)}  {desc}")


@app.command(
    "show",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog=examples(
        "fastdino presets show demo",
        "fastdino presets show vitb16-in1k optim.base_lr=1e-3 data.train=/data/in1k/train",
        "fastdino presets show demo --config mine.yaml   # a file merged over the preset",
    ),
)
def show_command(
    name: Annotated[str, typer.Argument(help="Preset name.")],
    overrides: OverridesArg = None,
    config: ConfigFileOpt = None,
) -> None:
    """Print the fully resolved config of a preset (with overrides) as YAML."""
    from fastdino_cli.config import config_to_yaml, resolve_config

    cfg = resolve_config(name, config, overrides or [])
    typer.echo(config_to_yaml(cfg), nl=False)


@app.command(
    "reference",
    epilog=examples(
        "fastdino presets reference > docs/config.md   # regenerate the docs page",
        "fastdino presets reference | grep crops.   # the keys of one section",
    ),
)
def reference_command() -> None:
    """Print every config key with its type, default and description as Markdown (the
    docs/config.md page, generated from the schema)."""
    from fastdino_cli.config.reference import render_reference

    typer.echo(render_reference(), nl=False)
