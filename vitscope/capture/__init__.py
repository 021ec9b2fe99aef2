"""Streaming a data set through a model into an activation dump, and finding the dump that
already serves a request.

- `stream`: `capture(model, dataset, out, hooks)`: only the hook points asked for, batches
  handed to a background writer thread, the file renamed into place when whole;
- `cache`: `ensure_dump(ckpt, ...)`: reuse a dump that covers (checkpoint, data, split, n,
  hooks, target), else capture one into outputs/dumps/;
- `memory`: the automatic batch size (activations, gradients and graph within a budget);
- `target`: which class a capture explains (pred, label, an index).
"""
from vitscope.capture.cache import (CAPTURE_SEED, DEFAULT_DUMP_DIR, DEFAULT_N, LEGACY_DUMP_DIR,
                                    check_data, covering_dump, data_spec, dataset_for,
                                    default_split, ensure_dump, find_dumps, run_name)
from vitscope.capture.memory import (BATCH_MEMORY, DEFAULT_BATCH, auto_batch_size,
                                     capture_bytes_per_image)
from vitscope.capture.stream import (COMPRESSIONS, DEFAULT_HOOKS, DTYPES, CaptureRequest, capture,
                                     check_limit, image_order, parse_shard, resolve_request,
                                     shard_range)
from vitscope.capture.target import TARGETS, num_classes, parse_target
from vitscope._internal.files import file_sha256

__all__ = ["capture", "CaptureRequest", "ensure_dump", "find_dumps", "dataset_for", "data_spec",
           "default_split", "check_data", "covering_dump",
           "run_name", "auto_batch_size", "capture_bytes_per_image", "parse_target",
           "num_classes", "resolve_request", "image_order", "parse_shard", "shard_range",
           "check_limit", "file_sha256", "DEFAULT_HOOKS", "DTYPES", "COMPRESSIONS", "DEFAULT_N",
           "DEFAULT_BATCH", "BATCH_MEMORY", "DEFAULT_DUMP_DIR", "LEGACY_DUMP_DIR",
           "CAPTURE_SEED", "TARGETS"]
