"""cifar10 / cifar100 from files written in the CIFAR python pickle format (no network)."""
from __future__ import annotations

import os
import pickle
import time

import numpy as np
import pytest

from vitscope.data import load_dataset
from vitscope.data import cifar
from vitscope.errors import DataError


def write_cifar10(root, per_batch=6, seed=0):
    """cifar-10-batches-py as torchvision leaves it: five train batches, a test batch, meta."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        with open(base / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels,
                         b"filenames": [b"x.png"] * per_batch}, f, protocol=2)
        written[name] = (data, labels)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f, protocol=2)
    return written


def write_cifar100(root, n_train=8, n_test=4):
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, n in (("train", n_train), ("test", n_test)):
        with open(base / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"fine_labels": rng.integers(0, 100, n).tolist(),
                         b"coarse_labels": rng.integers(0, 20, n).tolist()}, f)
    with open(base / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, f)


def test_cifar10_reads_python_batches_exactly(tmp_path):
    written = write_cifar10(tmp_path)
    train = load_dataset("cifar10", "train", 32, data_dir=tmp_path, download=False)
    assert train.images.shape == (30, 32, 32, 3) and train.images.dtype == np.uint8
    assert train.classes[:2] == ["airplane", "automobile"] and len(train.classes) == 10
    data, labels = written["data_batch_2"]
    # the rows are 1024 red, then 1024 green, then 1024 blue values, row-major
    first = data[0].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(train.images[6], first) and train.labels[6:12].tolist() == labels
    val = load_dataset("cifar10", "val", 32, data_dir=tmp_path, download=False)
    assert len(val) == 6 and val.split == "val" and val.spec == "cifar10"
    assert val.labels.tolist() == written["test_batch"][1]
    small = load_dataset("cifar10", "val", 16, data_dir=tmp_path, download=False)
    assert small.images.shape == (6, 16, 16, 3)
    carved = load_dataset("cifar10", "val", 32, data_dir=tmp_path, val_split=0.2)
    assert len(carved) == 6 and carved.split == "val"  # 20% of the 30 training images


def test_cifar100_uses_fine_labels(tmp_path):
    write_cifar100(tmp_path)
    ds = load_dataset("cifar100", "train", 32, data_dir=tmp_path, download=False)
    assert len(ds) == 8 and len(ds.classes) == 100 and ds.labels.max() < 100


def test_missing_files_offline_fail_fast_naming_the_folder(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="downloading is off") as e:
        load_dataset("cifar10", data_dir=tmp_path, download=False)
    assert str(tmp_path / "cifar-10-batches-py") in str(e.value)

    # No network: the connectivity probe fails; the download is never started.
    monkeypatch.setattr(cifar, "online", lambda host, *a, **k: False)
    with pytest.raises(DataError) as e:
        load_dataset("cifar100", data_dir=tmp_path)
    message = str(e.value)
    assert str(tmp_path / "cifar-100-python") in message
    assert "folder:PATH" in message and "shapes" in message and "\n" not in message


def test_online_probe_returns_quickly_for_an_unreachable_host():
    start = time.monotonic()
    assert cifar.online("unreachable.invalid", timeout=1.0) is False
    assert time.monotonic() - start < 30  # bounded by the thread join, never a hang


def test_tampered_pickle_is_refused(tmp_path):
    write_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(DataError, match="refusing to load"):
        load_dataset("cifar10", "val", data_dir=tmp_path, download=False)


def test_truncated_batch_is_reported(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", "train", data_dir=tmp_path, download=False)
