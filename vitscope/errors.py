"""Errors vitscope raises for bad input. The CLI prints their message as one `Error:` line.

Each message names the thing, says what went wrong, and says what to do.
"""


__all__ = ["VitscopeError", "ConfigError", "CheckpointError", "HookError", "DataError",
           "PluginError", "DumpError", "TrainingError", "TrainingInterrupted", "WriteError"]


class VitscopeError(Exception):
    """Base class: an error the user can fix; the CLI shows the message without a traceback."""


class ConfigError(VitscopeError, ValueError):
    """A bad configuration field, preset or value."""


class CheckpointError(VitscopeError):
    """A checkpoint file that is missing, corrupt, foreign, too new or unsafe."""


class HookError(VitscopeError, KeyError):
    """An unknown hook point name or a pattern that matches none."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DataError(VitscopeError):
    """A dataset spec, folder, file or split that cannot be loaded."""


class PluginError(VitscopeError):
    """An unknown plugin name, a bad `--opt plugin.key=value`, or a plugin that cannot run."""


class NotApplicable(PluginError):
    """A plugin that cannot apply to this model whatever its options (it reads a CLS token the
    model lacks): `analyze --all` skips it before any capture. `reason` is the short why (one
    line of a listing), `instead` what still applies."""

    def __init__(self, message: str, reason: str = "", instead: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message
        self.instead = instead


class DumpError(VitscopeError):
    """An activation dump that is missing, foreign, truncated, incomplete or too new, or a
    capture request that cannot be written (bad limit, shard, image size, existing file)."""


class Interrupted(VitscopeError):
    """Ctrl-C stopped a command; the message says what was kept. The CLI prints it as one
    line and exits with 130 (128 + SIGINT), as a shell does."""
    exit_code = 130


class TrainingError(VitscopeError):
    """Training cannot go on: a non-finite loss, out of memory, an existing run folder, a bad resume."""


class TrainingInterrupted(VitscopeError):
    """SIGINT/SIGTERM stopped training after last.pt was written (the CLI exits with 130)."""


class WriteError(VitscopeError, OSError):
    """A file that could not be written: a full disk, a quota, a vanished or read-only folder.
    The message names the file, the reason and the folder's free space; `with_hint` adds what
    was kept and what to do. Also an OSError, so code that handles those still does."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.base = message.rstrip(".")

    def __str__(self) -> str:
        return self.args[0] if self.args else ""

    def with_hint(self, hint: str) -> "WriteError":
        return WriteError(f"{self.base}; {hint.rstrip('.')}.")
