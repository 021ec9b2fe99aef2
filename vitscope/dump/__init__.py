"""Activation dumps: one HDF5 file per capture, written by `vitscope.capture`, read by plugins.
Imports no torch, so a dump made on a GPU renders on a laptop.

    from vitscope.dump import Dump
    with Dump.open("outputs/dumps/run-val-64.h5") as dump:
        for name in dump.match("blocks.*.attn.weights"):    # numeric layer order
            a = dump[name][:16]                              # lazy: reads 16 images only

- `reader`: `Dump`, the one way to open and read a dump (validated by `check`);
- `writer`: `DumpWriter`, chunked and compressed, finished atomically;
- `merge`: the shards of a `--shard i/n` capture joined without copying;
- `check`: the format's names and the validation `Dump.open` runs;
- `derive`: hook points stored as what they are an exact function of (LayerNorm outputs,
  CLS slices of the attention), computed on read.

docs/dump-format.md describes the file.
"""
from vitscope.dump.check import FORMAT, VERSION
from vitscope.dump.merge import merge
from vitscope.dump.reader import Dump
from vitscope.dump.writer import DumpWriter, dims_for
from vitscope.layout import TokenLayout

__all__ = ["Dump", "DumpWriter", "TokenLayout", "merge", "dims_for", "FORMAT", "VERSION"]
