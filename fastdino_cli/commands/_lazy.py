"""Lazy subcommands: a command's module is imported only when that command runs or shows help.

Why: importing every command module up front made ``fastdino --help`` cost 7 s of CPU, most of
it torch and pytorch_grad_cam pulled in by modules the user did not ask for. Here the top-level
group knows its commands from a static table (``LazyCommand``: name, module, help panel, one-line
help). ``fastdino --help`` and shell completion list that table and import nothing;
``fastdino probe ...`` and ``fastdino probe --help`` import ``commands/probe.py`` alone.

A command module exposes either ``register(app)``, which adds one command named as in the table
(``app.command("probe", ...)(probe_command)``), or ``app``, a ``typer.Typer`` group (``presets``,
``checkpoint``, ``data``). Either way it is built exactly as an eager ``app.command`` /
``app.add_typer`` on the root would build it. Command modules keep heavy imports (torch,
matplotlib, pandas, pytorch_grad_cam) inside their functions so that their own ``--help`` and
usage errors stay cheap too; ``tests/test_cli_startup.py`` checks both.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup


@dataclass(frozen=True)
class LazyCommand:
    """One row of the top-level table of contents."""

    name: str
    """What the user types: ``fastdino <name>``."""
    module: str
    """Module that defines it (``register(app)`` or ``app``), imported on first use."""
    panel: str
    """Help panel it is listed under in ``fastdino --help`` (Training, Evaluation, ...)."""
    short_help: str
    """The one line ``fastdino --help`` shows (the command's own ``--help`` says the rest)."""


def build_command(entry: LazyCommand, rich_markup_mode: Any = "rich") -> Any:
    """Import ``entry.module`` and build its click command as the eager root would have."""
    module = importlib.import_module(entry.module)
    holder = typer.Typer(add_completion=False, rich_markup_mode=rich_markup_mode)
    holder.callback()(_noop)  # a callback makes ``holder`` a group, whatever it holds
    if hasattr(module, "register"):
        module.register(holder)
    else:
        holder.add_typer(module.app, name=entry.name)
    group = typer.main.get_command(holder)
    command = group.commands.get(entry.name)  # type: ignore[attr-defined]
    if command is None:
        raise RuntimeError(f"{entry.module} does not define the command {entry.name!r}")
    command.rich_help_panel = entry.panel
    return command


def _noop() -> None:
    """Callback of the throwaway group that ``build_command`` builds a command in."""


class LazyGroup(TyperGroup):
    """A Typer group whose subcommands come from ``entries`` and are built on first use.

    Subclass it with ``entries`` set and pass it as ``typer.Typer(cls=...)``.
    """

    entries: tuple[LazyCommand, ...] = ()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._by_name = {e.name: e for e in self.entries}
        self._listing = False
        self.suggest_commands = False  # resolve_command suggests from the whole table

    @contextmanager
    def _only_listing(self) -> Iterator[None]:
        """While help or completion lists the commands, answer with stand-ins from the table."""
        self._listing = True
        try:
            yield
        finally:
            self._listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        eager = [n for n in super().list_commands(ctx) if n not in self._by_name]
        return [*(e.name for e in self.entries), *eager]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        entry = self._by_name.get(cmd_name)
        if entry is None:
            return super().get_command(ctx, cmd_name)
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        if self._listing:
            return TyperCommand(
                entry.name,
                short_help=entry.short_help,
                help=entry.short_help,
                rich_help_panel=entry.panel,
                rich_markup_mode=self.rich_markup_mode,
            )
        command = build_command(entry, self.rich_markup_mode)
        self.commands[cmd_name] = command
        return command

    def format_help(self, ctx: Any, formatter: Any) -> None:
        with self._only_listing():
            super().format_help(ctx, formatter)

    def shell_complete(self, ctx: Any, incomplete: str) -> list[Any]:
        with self._only_listing():
            return super().shell_complete(ctx, incomplete)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        """As Typer's, with the did-you-mean drawn from the table (``self.commands`` only holds
        the commands built so far, so Typer's own suggestion is switched off in ``__init__``)."""
        try:
            return super().resolve_command(ctx, args)
        except Exception as e:  # click's UsageError (vendored by Typer)
            message = getattr(e, "message", None)
            if isinstance(message, str) and args and message.startswith("No such command"):
                matches = get_close_matches(args[0], self.list_commands(ctx))
                if matches:
                    hint = ", ".join(repr(m) for m in matches)
                    e.message = f"{message.rstrip('.')}. Did you mean {hint}?"  # type: ignore[attr-defined]
            raise
