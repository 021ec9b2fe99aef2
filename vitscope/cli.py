"""The `vitscope` command line.

Commands live in `vitscope/commands/` and are imported only when used (or when `--help`
lists them), so `vitscope --version` does not pay for importing torch. To add a command,
add one line to COMMANDS.
"""
from __future__ import annotations

import importlib
import os
import warnings

import click

from vitscope import __version__

# command name -> "module:attribute" of a click.Command
COMMANDS: dict[str, str] = {
    "info": "vitscope.commands.info:info",
    "hooks": "vitscope.commands.info:hooks",
    "eval": "vitscope.commands.evaluate:eval_cmd",
    "ablate": "vitscope.commands.ablate:ablate_cmd",
    "predict": "vitscope.commands.evaluate:predict",
    "train": "vitscope.commands.train:train",
    "dump": "vitscope.commands.dump:dump",
    "analyze": "vitscope.commands.analyze:analyze",
    "plugins": "vitscope.commands.analyze:plugins",
    "score": "vitscope.commands.score:score",
    "compare": "vitscope.commands.compare:compare",
    "animate": "vitscope.commands.animate:animate",
    "import": "vitscope.commands.importer:import_cmd",
}


class LazyGroup(click.Group):
    """A group that imports each command on demand and turns VitscopeError into one line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *super().list_commands(ctx)})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            module, attr = COMMANDS[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Each command's whole first sentence, wrapped, instead of click's cut-off "..."."""
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=1000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        from vitscope._internal.signals import interrupt_once
        from vitscope.errors import Interrupted, VitscopeError
        try:
            with interrupt_once():
                return super().invoke(ctx)
        except KeyboardInterrupt:   # a command that says nothing more: still one line, 130
            raise Stopped("Interrupted (Ctrl-C).") from None
        except Interrupted as e:
            raise Stopped(f"Interrupted (Ctrl-C): {e}") from None
        except VitscopeError as e:
            # Under torchrun every process hits the same error: say which one is speaking.
            rank = os.environ.get("RANK") if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else None
            raise click.ClickException(f"(rank {rank}) {e}" if rank not in (None, "0")
                                       else str(e)) from None


class Stopped(click.ClickException):
    """Ctrl-C: its one line (no "Error:", no traceback, no click "Aborted!"), exit code 130."""
    exit_code = 130

    def show(self, file=None) -> None:
        click.echo(self.message, err=True)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="vitscope")
def main() -> None:
    """vitscope: train Vision Transformers, capture their activations, and look inside them."""
    warnings.formatwarning = _one_line_warning
    _escape_unprintable_names()
    from vitscope._internal import threads
    try:
        threads.configure()   # before any command imports torch (vitscope._internal.threads says why)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    from vitscope.analyze.registry import TORCH_AUTOLOAD_ENV, guard_torch_import
    for path in guard_torch_import():   # before any command imports torch
        click.echo(f"Warning: '{path}' cannot be decoded, so torch's device-backend plugins are "
                   f"not loaded ({TORCH_AUTOLOAD_ENV}=0); reinstall or remove that package.",
                   err=True)


def _escape_unprintable_names() -> None:
    """A Linux file name is bytes; one that is not UTF-8 reaches Python as surrogateescape
    text, which a UTF-8 terminal stream refuses ("UnicodeEncodeError" at the first message
    naming it). Shown escaped instead: `bad\\udcff.png`."""
    import sys
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings meant for users (e.g. skipped corrupt images) as one `Warning:` line."""
    return f"Warning: {message}\n"


if __name__ == "__main__":
    main()
