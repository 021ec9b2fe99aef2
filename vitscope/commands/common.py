"""Options several commands share."""
from __future__ import annotations

import click


def _apply_threads(ctx: click.Context, param: click.Parameter, value: str | None):
    if value is None:
        return None
    from vitscope._internal import threads
    try:
        return threads.configure(value, source="--threads")
    except ValueError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None


def threads_option(f):
    """`--threads N|auto|torch`: CPU threads for torch (vitscope._internal.threads), applied before the
    command imports torch."""
    return click.option(
        "--threads", callback=_apply_threads, expose_value=False, is_eager=True,
        metavar="N|auto|torch",
        help="CPU threads for torch (default auto: the CPUs not busy with other processes; "
             "idle threads sleep instead of spinning). Also VITSCOPE_THREADS.")(f)


def opt_option(f):
    """`--opt PLUGIN.KEY=VALUE` (repeatable): a plugin option, parsed by vitscope.analyze.options."""
    return click.option("--opt", "opts", multiple=True, metavar="PLUGIN.KEY=VALUE",
                        help="A plugin option, e.g. --opt rollout.discard_ratio=0.9 "
                             "(repeatable).")(f)


def device_option(f):
    """`--device`: checked by vitscope._internal.devices before any work."""
    return click.option("--device", default="auto", show_default=True,
                        help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps.")(f)
