"""The host that runs plugins: `vitscope analyze`, `score` and training-time analysis use it.

- `registry`: discovery through entry points, validation, `vitscope plugins`;
- `options`: `--opt plugin.key=value`, checked against the model before any work;
- `plan`: which plugins run, on which hook points and dump (an `AnalyzeRequest`);
- `run`: rendering the chosen plugins on a dump, into staged folders;
- `isolation`: each plugin in a child process of its own;
- `staging`: render into temporary folders, swap them into place on success;
- `selection`: `--select`, which images the figures show;
- `epochs`: `vitscope train --analyze-every`; `animation`: one of its figures across epochs.
"""
from vitscope.analyze.epochs import epoch_analyses_dir, make_epoch_analyzer
from vitscope.analyze.run import (PluginResult, describe_dump, missing_hooks, output_folder,
                                  render_plugin, render_plugins, union_requires)

__all__ = ["render_plugins", "render_plugin", "PluginResult", "missing_hooks", "union_requires",
           "output_folder", "describe_dump", "make_epoch_analyzer", "epoch_analyses_dir"]
