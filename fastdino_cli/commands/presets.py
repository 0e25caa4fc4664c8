"""`fastdino presets list|show`: the preset registry."""

from __future__ import annotations

from typing import Annotated

import typer

from fastdino_cli.commands._common import ConfigFileOpt, OverridesArg
from fastdino_cli.config import config_to_yaml, list_presets, resolve_config

app = typer.Typer(help="List presets and print resolved configs.", no_args_is_help=True)


@app.command("list")
def list_command() -> None:
    """Print every shipped preset with its one-line description."""
    presets = list_presets()
    width = max(len(n) for n in presets)
    for name, desc in presets.items():
        typer.echo(f"{name.ljust(width)}  {desc}")


@app.command(
    "show",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog="Example: fastdino presets show vitb16-in1k optim.base_lr=1e-3",
)
def show_command(
    name: Annotated[str, typer.Argument(help="Preset name.")],
    overrides: OverridesArg = None,
    config: ConfigFileOpt = None,
) -> None:
    """Print the fully resolved config of a preset (with overrides) as YAML."""
    cfg = resolve_config(name, config, overrides or [])
    typer.echo(config_to_yaml(cfg), nl=False)
