"""`cifar10` / `cifar100`: the python-format CIFAR files in `data_dir`, downloaded if absent.

The batches are read straight into one uint8 array (no per-image PIL objects). `val` is the
official test split. Before a download, a short connectivity check runs in a thread with a
timeout, so an offline machine gets one clear sentence within seconds instead of a hang.
The pickles are read with an unpickler that only builds numpy arrays and plain data: a
tampered file cannot run code.
"""
from __future__ import annotations

import io
import pickle
import socket
import threading
from pathlib import Path

import numpy as np

from vitscope.data.base import ImageDataset
from vitscope.errors import DataError

CONNECT_TIMEOUT_S = 3.0
HOST = "www.cs.toronto.edu"  # where torchvision downloads CIFAR from (CIFAR10.url)

# kind -> (folder inside data_dir, train files, test files, meta file, class-name key, label key)
LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "batches.meta", "label_names", "labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_label_names", "fine_labels"),
}


def load(kind: str, split: str, *, data_dir, download: bool = True):

    folder, train_files, test_files, meta_file, names_key, labels_key = LAYOUT[kind]
    base = Path(data_dir).expanduser() / folder
    needed = [*train_files, *test_files, meta_file]
    if not all((base / f).is_file() for f in needed):
        if not download:
            raise DataError(f"The {kind} files are not in '{base}' and downloading is off; put "
                            f"the python-format CIFAR files there, or use --data folder:PATH or "
                            f"--data shapes.")
        _download(kind, Path(data_dir).expanduser())

    classes = [_text(c) for c in _read(base / meta_file)[names_key]]
    images, labels = [], []
    for name in (train_files if split == "train" else test_files):
        batch = _read(base / name)
        try:
            data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels.append(np.asarray(batch[labels_key], dtype=np.int64))
        except (KeyError, ValueError) as e:
            raise DataError(f"'{base / name}' is not a {kind} batch ({type(e).__name__}: {e}); "
                            f"delete '{base}' so it is downloaded again.") from None
        images.append(data.transpose(0, 2, 3, 1))  # N×3×32×32 planes -> N×32×32×3
    images_np = np.ascontiguousarray(np.concatenate(images))
    labels_np = np.concatenate(labels)
    if len(images_np) != len(labels_np) or labels_np.min() < 0 or labels_np.max() >= len(classes):
        raise DataError(f"The {kind} files in '{base}' are inconsistent ({len(images_np)} images, "
                        f"{len(labels_np)} labels, {len(classes)} classes); delete '{base}' so "
                        f"they are downloaded again.")
    return ImageDataset(images=images_np, labels=labels_np, classes=classes, masks=None,
                        spec=kind, split=split, paths=None)


def _download(kind: str, data_dir: Path) -> None:
    where = data_dir / LAYOUT[kind][0]
    if not online(HOST):  # checked before importing torchvision: fail in seconds, not minutes
        raise DataError(f"The {kind} files are not in '{where}' and {HOST} cannot be reached "
                        f"(no network?); copy the python-format CIFAR files there, or use "
                        f"--data folder:PATH or --data shapes.")
    from torchvision import datasets
    from torchvision.datasets.utils import download_and_extract_archive

    cls = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
    try:
        download_and_extract_archive(cls.url, str(data_dir), filename=cls.filename, md5=cls.tgz_md5)
    except Exception as e:  # URLError, timeouts, md5 mismatch, a full disk ...
        raise DataError(f"Downloading {kind} into '{data_dir}' failed ({type(e).__name__}: "
                        f"{str(e)[:160]}); retry, or use --data folder:PATH or --data shapes.") from None


def online(host: str, port: int = 443, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to host:port opens within `timeout` seconds.

    Runs in a daemon thread because name resolution ignores socket timeouts and can block for
    much longer on a machine without network.
    """
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


class _SafeUnpickler(pickle.Unpickler):
    """Builds numpy arrays and plain Python data only."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"), ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(io.BufferedReader(f), encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise DataError(f"'{path}' cannot be read as a python-format CIFAR file "
                        f"({type(e).__name__}: {e}); delete it so it is downloaded again.") from None
    if not isinstance(obj, dict):
        raise DataError(f"'{path}' holds a {type(obj).__name__}, not a CIFAR batch dict; delete "
                        f"it so it is downloaded again.")
    return {_text(k): v for k, v in obj.items()}


def _text(value) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)
