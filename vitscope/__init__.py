"""vitscope: train Vision Transformers, capture their activations, and look inside them.

The packages follow the data: data -> model -> capture -> dump -> plugin/render (figures) ->
analyze (the host that runs plugins) -> evaluate / score; commands/ holds the thin CLI. The
notebook API is `vitscope.api`.

Importing vitscope changes nothing in the host process: no threads or environment variables
are set (the CLI configures threads itself). Old module paths of earlier versions keep
working for one release, with a DeprecationWarning (vitscope._internal.compat).
"""

__version__ = "0.2.0"

from vitscope._internal import compat as _compat  # noqa: E402

_compat.install()
