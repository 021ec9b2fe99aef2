"""`folder:PATH` datasets from real JPEG/PNG/... files of odd sizes, the cache, and each error."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from PIL import Image

from vitscope.data import load_dataset
from vitscope.data import folder as folder_mod
from vitscope.data.folder import CorruptImageWarning
from vitscope.data.images import decode_image
from vitscope.errors import DataError

FORMATS = ["jpg", "png", "bmp", "webp", "gif", "tiff"]


def write_image(path, w, h, colour=None, mode="RGB", seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if colour is None:
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    else:
        pixels = np.broadcast_to(np.asarray(colour, np.uint8), (h, w, 3)).copy()
    img = Image.fromarray(pixels)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path)
    return path


def make_tree(root, splits=("train", "val"), classes=("cat", "dog", "emu"), per_class=3):
    """Files of odd sizes and formats; every class has its own constant colour."""
    colours = {"cat": (250, 20, 20), "dog": (20, 250, 20), "emu": (20, 20, 250), "fox": (9, 9, 9)}
    n = 0
    for split in splits:
        for c in classes:
            for i in range(per_class):
                ext = FORMATS[n % len(FORMATS)]
                mode = "RGBA" if ext == "png" else "P" if ext == "gif" else "RGB"
                base = root / split / c if split else root / c
                write_image(base / f"{c}{i}.{ext}", 17 + 13 * (i % 3), 40 - 7 * (i % 4), colours[c], mode)
                n += 1
    return root


def load(spec, split="train", size=16, cache=None, **kw):
    return load_dataset(spec, split, size, cache_dir=cache, **kw)


def test_tree_with_corrupt_file_and_cache(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "data")
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "train" / "dog" / "notes.txt").write_text("not an image, ignored by extension")
    (root / "train" / "cat" / ".hidden.png").write_bytes(b"ignored: hidden")
    cache = tmp_path / "cache"

    with pytest.warns(CorruptImageWarning) as record:
        ds = load(f"folder:{root}", "train", 16, cache)
    assert len(record) == 1  # ONE warning, naming the skipped file
    assert "broken.jpg" in str(record[0].message) and "Skipped 1 " in str(record[0].message)
    assert ds.images.shape == (9, 16, 16, 3) and ds.images.dtype == np.uint8
    assert ds.classes == ["cat", "dog", "emu"] and ds.labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    assert len(ds.paths) == 9 and not any("broken" in p for p in ds.paths)
    assert ds.masks is None and ds.split == "train"
    # each class's images carry its colour (RGBA, palette GIF, TIFF ... all decoded to RGB)
    mean_rgb = ds.images.reshape(9, -1, 3).mean(1)
    assert (mean_rgb.argmax(1) == ds.labels).all()
    assert len(list((cache / "folders").glob("*.npz"))) == 1

    # Second load: served from the cache (decoding would raise), same arrays, same warning.
    def no_decode(*a, **k):
        raise AssertionError("decoded again despite the cache")
    monkeypatch.setattr(folder_mod, "decode_files", no_decode)
    with pytest.warns(CorruptImageWarning, match="broken.jpg"):
        again = load(f"folder:{root}", "train", 16, cache)
    assert np.array_equal(again.images, ds.images) and again.paths == ds.paths

    # A changed file changes the key: the folder is decoded again.
    os.utime(root / "train" / "cat" / "cat0.jpg", ns=(1, 1))
    with pytest.raises(AssertionError, match="decoded again"):
        load(f"folder:{root}", "train", 16, cache)
    monkeypatch.undo()

    val = load(f"folder:{root}", "val", 16, cache)
    assert len(val) == 9 and val.classes == ds.classes and val.split == "val"


def test_resize_policy_shorter_side_then_centre_crop(tmp_path):
    # 60×20: red | green | blue thirds. Shorter side -> 16 gives 48×16; the centre crop is green.
    pixels = np.zeros((20, 60, 3), np.uint8)
    pixels[:, :20, 0] = pixels[:, 20:40, 1] = pixels[:, 40:, 2] = 255
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    out = decode_image(tmp_path / "wide.png", 16)
    assert out.shape == (16, 16, 3)
    assert (out[:, 1:-1, 1] > 200).all() and (out[:, 1:-1, 0] < 40).all() and (out[:, 1:-1, 2] < 40).all()
    # a tiny image is enlarged to the requested size
    write_image(tmp_path / "tiny.jpg", 5, 3)
    assert decode_image(tmp_path / "tiny.jpg", 16).shape == (16, 16, 3)


def test_single_split_tree_carves_val(tmp_path):
    root = make_tree(tmp_path / "data", splits=("",), per_class=10)
    train = load(f"folder:{root}", "train", 8, tmp_path / "c")
    val = load(f"folder:{root}", "val", 8, tmp_path / "c")
    assert (len(train), len(val)) == (27, 3)  # default val_split 0.1
    assert not set(train.paths) & set(val.paths)
    assert val.paths == load(f"folder:{root}", "val", 8, tmp_path / "c").paths
    val20 = load(f"folder:{root}", "val", 8, tmp_path / "c", val_split=0.2)
    assert len(val20) == 6


def test_flat_folder_is_unlabeled(tmp_path):
    for i, ext in enumerate(["jpg", "png", "webp"]):
        write_image(tmp_path / "imgs" / f"x{i}.{ext}", 30 + i, 21, seed=i)
    for split in ("val", "train"):
        ds = load(f"folder:{tmp_path / 'imgs'}", split, 12, tmp_path / "c")
        assert ds.classes == [] and ds.labels.tolist() == [-1, -1, -1] and len(ds.paths) == 3
        assert ds.split == split and ds.images.shape == (3, 12, 12, 3)


def test_parallel_decode_matches_in_process(tmp_path, monkeypatch):
    paths = [str(write_image(tmp_path / f"{i}.jpg", 20 + i, 25, seed=i)) for i in range(10)]
    (tmp_path / "bad.png").write_bytes(b"junk")
    paths.insert(4, str(tmp_path / "bad.png"))
    monkeypatch.setattr(folder_mod, "POOL_MIN_FILES", 0)
    monkeypatch.setattr(folder_mod, "TASK_FILES", 3)
    pooled, errors = folder_mod.decode_files(paths, 16, workers=2)
    single, errors1 = folder_mod.decode_files(paths, 16, workers=1)
    assert np.array_equal(pooled, single) and errors == errors1
    assert [e is not None for e in errors] == [i == 4 for i in range(11)]


@pytest.mark.parametrize("case, fragment", [
    ("missing", "does not exist"),
    ("file", "is a file, not a folder"),
    ("empty_class", "holds no image files; add images"),
    ("mismatch", "only in train: emu; only in val: fox"),
    ("no_images", "holds no image files (looked for"),
    ("all_corrupt", "None of the 2 image files"),
    ("class_all_corrupt", "None of the image files of the class folder(s) '"),
    ("val_without_train", "has only sub-folders named like dataset splits (val)"),
    ("test_alone", "has only sub-folders named like dataset splits (test)"),
    ("splits_in_train", "has only sub-folders named like dataset splits (train, val)"),
])
def test_folder_errors_are_one_sentence(tmp_path, case, fragment):
    root = tmp_path / "data"
    if case == "file":
        root.write_text("x")
    elif case == "empty_class":
        make_tree(root, splits=("",), classes=("cat",), per_class=1)
        (root / "dog").mkdir()
    elif case == "mismatch":
        make_tree(root, splits=("train",), classes=("cat", "emu"), per_class=1)
        make_tree(root, splits=("val",), classes=("cat", "fox"), per_class=1)
    elif case == "no_images":
        root.mkdir()
        (root / "readme.txt").write_text("no images here")
    elif case == "all_corrupt":
        root.mkdir()
        (root / "a.jpg").write_bytes(b"junk")
        (root / "b.png").write_bytes(b"junk")
    elif case == "class_all_corrupt":  # dog's only files are broken: it would train empty
        make_tree(root, splits=("train", "val"), classes=("cat", "dog"), per_class=1)
        for f in (root / "train" / "dog").iterdir():
            f.write_bytes(b"junk")
        (root / "train" / "dog" / "more.png").write_bytes(b"junk")
    elif case == "val_without_train":
        make_tree(root, splits=("val",), per_class=1)
    elif case == "test_alone":
        make_tree(root, splits=("test",), per_class=1)
    elif case == "splits_in_train":  # one level too high: PATH/train/{train,val}/<class>
        make_tree(root / "train", splits=("train", "val"), per_class=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # errors must not come with warnings first
        with pytest.raises(DataError) as e:
            load(f"folder:{root}", "train", 8, tmp_path / "c")
    message = str(e.value)
    assert fragment in message and "\n" not in message and str(root) in message
    if case == "class_all_corrupt":
        assert f"'{root / 'train' / 'dog'}'" in message and str(root / "train" / "cat") not in message


@pytest.mark.parametrize("train_name, val_name", [
    ("train", "valid"), ("train", "validation"), ("training", "validation"), ("Train", "Val"),
])
def test_split_folders_may_have_common_other_names(tmp_path, train_name, val_name):
    root = tmp_path / "data"
    make_tree(root, splits=(train_name, val_name), per_class=2)
    write_image(root / train_name / "cat" / "extra.png", 20, 20, (250, 20, 20))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train = load(f"folder:{root}", "train", 8, tmp_path / "c")
        val = load(f"folder:{root}", "val", 8, tmp_path / "c")
    assert train.classes == val.classes == ["cat", "dog", "emu"]
    assert (len(train), len(val)) == (7, 6)
    assert all(f"/{train_name}/" in p for p in train.paths)
    assert all(f"/{val_name}/" in p for p in val.paths)


def test_a_class_named_like_a_split_beside_real_classes_is_kept_with_a_warning(tmp_path):
    root = tmp_path / "data"
    make_tree(root, splits=("",), classes=("cat", "dog"), per_class=5)
    make_tree(tmp_path / "other", splits=("",), classes=("emu",), per_class=5)
    (tmp_path / "other" / "emu").rename(root / "valid")  # e.g. "valid" vs "invalid" documents
    with pytest.warns(folder_mod.DataWarning, match=r"valid in '.*' are named like dataset splits"):
        ds = load(f"folder:{root}", "train", 8, tmp_path / "c")
    assert ds.classes == ["cat", "dog", "valid"]


def test_sixteen_bit_and_float_images_are_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")                       # mode I;16
    Image.fromarray((ramp / 65535).astype(np.float32)).save(tmp_path / "f.tiff")  # mode F
    for name in ("g16.png", "f.tiff"):
        img = decode_image(tmp_path / name, 32)
        assert img.shape == (32, 32, 3)
        assert img.min() <= 2 and img.max() >= 253           # the whole range, not clipped white
        assert abs(float(img.mean()) - 127.5) < 3, name
