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
