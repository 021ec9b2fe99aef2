"""Hook points derived on read: stored once as what they are an exact function of.

A LayerNorm's output (`blocks.{i}.norm1.out`, `norm2.out`, `norm.out`) is a cheap, exact
function of its input, which a dump of the default hooks stores anyway (`norm1.in`,
`norm2.in`, and `blocks.{last}.out` for `norm.in`): `(x - mean) / sqrt(var + eps) * weight +
bias` over the last axis. Capture stores the norm's weight, bias and eps in the dump instead of
the output (about 29% of the default set's bytes for the shipped CIFAR-10 model), and
`Dump[name]` returns a `DerivedDataset` that computes it from the stored input when read, in
numpy (the reader needs neither torch nor the model). What is derived is first checked on the
capture's first batch against what the model computed (`matches`); a hook point that does not
match is stored as usual.

The result is cast to the dump's dtype, so a derived fp16 hook equals the stored one to fp16
precision: within `TOLERANCE` of `|stored| + rms(stored token)` (rounding the input to fp16
moves the output by about one fp16 step of the token's scale).
"""
from __future__ import annotations

from typing import Any

import numpy as np

FUNCTIONS = ("layer_norm",)
# |derived - stored| <= TOLERANCE * (|stored| + rms of the stored token): 4 half-steps of fp16
# (2^-11 relative each); measured on the shipped CIFAR-10 checkpoint: at most 1.9.
TOLERANCE = 2.0 ** -9


def layer_norm(x: np.ndarray, weight: np.ndarray | None, bias: np.ndarray | None,
               eps: float) -> np.ndarray:
    """LayerNorm over the last axis in float32, as torch.nn.functional.layer_norm computes it."""
    x = np.asarray(x, np.float32)
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = np.square(centred).mean(axis=-1, keepdims=True)
    out = centred * (1.0 / np.sqrt(var + np.float32(eps)))
    if weight is not None:
        out *= weight
    if bias is not None:
        out += bias
    return out


def mismatch(derived: np.ndarray, stored: np.ndarray) -> float:
    """max |derived - stored| / (|stored| + rms of the stored token): the error in units of the
    values' own scale, which `TOLERANCE` bounds for a derivation equal to fp16 precision."""
    stored = np.asarray(stored, np.float32)
    derived = np.asarray(derived, np.float32)
    rms = np.sqrt(np.square(stored).mean(axis=-1, keepdims=True))
    scale = np.abs(stored) + rms
    err = np.abs(derived - stored)
    return float(np.max(np.divide(err, scale, out=np.where(err > 0, np.inf, 0.0),
                                  where=scale > 0), initial=0.0))


def matches(derived: np.ndarray, stored: np.ndarray) -> bool:
    return mismatch(derived, stored) <= TOLERANCE


class _ReadView:
    """What a hook point read from another one shares with an h5py.Dataset: `len()`,
    `np.asarray(ds)`, and numpy-style keys normalised to one index per axis."""

    shape: tuple[int, ...]
    ndim: int

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        out = self[()]
        return out if dtype is None else out.astype(dtype)

    def _expand(self, key) -> tuple:
        """`key` as a tuple of one index per axis (an Ellipsis expanded, the rest whole)."""
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            fill = self.ndim - (len(key) - 1)
            key = key[:i] + (slice(None),) * fill + key[i + 1:]
        if len(key) > self.ndim:
            raise IndexError(f"{len(key)} indices for a {self.ndim}-dimensional hook point")
        return key + (slice(None),) * (self.ndim - len(key))


class DerivedDataset(_ReadView):
    """A hook point computed from a stored one when read; reads like the h5py.Dataset it
    replaces: `shape`, `dtype`, `ndim`, `len()`, `chunks`, `attrs["dims"]`, numpy-style
    slicing (`ds[a:b]`, `ds[:n, 0]`, `ds[[1, 5]]`, `ds[..., 3]`) and `np.asarray(ds)`.

    Any selection of the leading axes is read from the source by HDF5; the last axis (what
    the norm runs over) is always read whole, normalised, then selected."""

    def __init__(self, name: str, source, params: dict[str, Any], attrs) -> None:
        self.name = name
        self.source = source                      # the stored h5py.Dataset (or a virtual one)
        self.function = params["function"]
        if self.function not in FUNCTIONS:
            raise ValueError(f"unknown derivation '{self.function}'")
        self.eps = float(params["eps"])
        self.weight = params.get("weight")
        self.bias = params.get("bias")
        self.attrs = attrs                        # at least "dims", like a stored dataset's
        self.shape = tuple(source.shape)
        self.dtype = source.dtype
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape, dtype=np.int64))
        self.chunks = source.chunks
        self.is_virtual = False
        self.compression = None

    def __repr__(self) -> str:
        return (f"<DerivedDataset '{self.name}': {self.function} of "
                f"'{self.source.name.rsplit('/', 1)[-1]}', shape {self.shape}, {self.dtype}>")

    def __getitem__(self, key) -> np.ndarray:
        lead, last = self._split(key)
        x = self.source[lead] if lead else self.source[()]
        y = layer_norm(x, self.weight, self.bias, self.eps).astype(self.dtype, copy=False)
        return y if last == slice(None) else y[..., last]

    def _split(self, key) -> tuple[tuple, Any]:
        """(selection of the leading axes with the last axis whole, selection of the last)."""
        key = self._expand(key)
        return key[:-1] + (slice(None),), key[-1]


class SliceView(_ReadView):
    """A CLS row or column of a stored N×H×T×T attention dataset, read as the N×H×T hook
    point `<attention>.cls_row` / `.cls_col` (vitscope.names.SLICES): HDF5 reads only that
    row or column. Slices like an h5py dataset (`ds[a:b]`, `ds[a:b, :, p:]`, `ds[[1, 5]]`,
    `ds[..., 3]`, `np.asarray(ds)`)."""

    def __init__(self, name: str, source, axis: int, index: int) -> None:
        if len(source.shape) != 4 or axis not in (2, 3):
            raise ValueError(f"a CLS slice needs an N×H×T×T attention, not shape {source.shape}")
        self.name, self.source, self.axis, self.index = name, source, axis, int(index)
        self.shape = tuple(source.shape[:3])
        self.dtype = source.dtype
        self.ndim = 3
        self.size = int(np.prod(self.shape, dtype=np.int64))
        self.chunks = tuple(source.chunks[:3]) if source.chunks else None
        self.is_virtual = False
        self.compression = None
        self.attrs = {"dims": ["N", "H", "T"]}

    def __repr__(self) -> str:
        return (f"<SliceView '{self.name}': axis {self.axis} = {self.index} of "
                f"'{getattr(self.source, 'name', '?')}', shape {self.shape}, {self.dtype}>")

    def __getitem__(self, key) -> np.ndarray:
        key = self._expand(key)
        # N, H, then the free token axis, with the fixed one at its place in N×H×T×T.
        full = key[:2] + ((self.index, key[2]) if self.axis == 2 else (key[2], self.index))
        return np.asarray(self.source[full])


# ------------------------------------------------------------------ per-head contributions
# `blocks.{i}.attn.head_out` is stored before the output projection (N×H×T×dh, the size of
# `attn.out`); each head's contribution to the residual stream (N×H×T×D, H times larger) is
# computed on read from it and the projection the dump keeps in /readout
# (vitscope.model.readout): sum over heads + the projection's bias = `attn.out`.

def head_contributions(head_out: np.ndarray, proj_weight: np.ndarray,
                       layer_scale: np.ndarray | None = None) -> np.ndarray:
    """N×H×...×dh per-head values, D×(H·dh) projection -> N×H×...×D contributions (times the
    layer scale, when given: what the head adds to the residual stream)."""
    z = np.asarray(head_out, np.float32)
    H, dh = z.shape[1], z.shape[-1]
    w = np.asarray(proj_weight, np.float32).reshape(-1, H, dh)        # D×H×dh
    out = np.einsum("nh...k,dhk->nh...d", z, w, optimize=True)
    return out * np.asarray(layer_scale, np.float32) if layer_scale is not None else out
