"""`imagenet-seg:PATH`: the ImageNet-segmentation benchmark's gtsegs_ijcv.mat (MATLAB v7.3 =
HDF5 with object references, column-major arrays), written in that layout with h5py:
images and masks come back the right way round, through the model's preprocessing, read
lazily, and feed `vitscope score`'s localisation."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vitscope.cli import main
from vitscope.data import imagenet_seg, load_dataset
from vitscope.data.images import prepare_image
from vitscope.errors import DataError

H, W = 20, 28     # not square, so a transposition error changes the shape


def source_images(n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """n H×W×3 images whose top half is bright, with that half as the mask (rows 0..9)."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 60, (n, H, W, 3), dtype=np.uint8)
    images[:, :H // 2] += 180
    images[:, :H // 2, :, 0] = np.arange(n)[:, None, None] * 10   # tells the images apart
    masks = np.zeros((n, H, W), np.uint8)
    masks[:, :H // 2] = 1
    return images, masks


def write_mat(path, images, masks) -> None:
    """The layout of gtsegs_ijcv.mat, written here and not by vitscope.data.imagenet_seg.write,
    so a layout error in vitscope cannot hide behind its own writer: MATLAB's 512-byte header,
    /value/img and /value/gt as N×1 references; an image stored as 3×W×H (column-major
    H×W×3), a mask as W×H behind a 1×1 array of references."""
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        img = np.empty((len(images), 1), h5py.ref_dtype)
        gt = np.empty((len(images), 1), h5py.ref_dtype)
        for k, (im, m) in enumerate(zip(images, masks)):
            img[k, 0] = refs.create_dataset(f"i{k}", data=im.transpose(2, 1, 0)).ref
            mask = refs.create_dataset(f"m{k}", data=m.transpose(1, 0))
            cell = refs.create_dataset(f"c{k}", data=np.array([[mask.ref]], h5py.ref_dtype))
            gt[k, 0] = cell.ref
        f.create_dataset("value/img", data=img)
        f.create_dataset("value/gt", data=gt)


def test_the_writer_writes_what_chefers_indexing_reads(tmp_path):
    """vitscope's writer (for benchmarks) against the reference loader's indexing."""
    images, masks = source_images(3)
    imagenet_seg.write(tmp_path / "w.mat", images, masks)
    with h5py.File(tmp_path / "w.mat", "r") as f:
        for k in range(3):
            img = np.array(f[f["/value/img"][k, 0]]).transpose((2, 1, 0))
            gt = np.array(f[f[f["/value/gt"][k, 0]][0, 0]]).transpose((1, 0))
            assert np.array_equal(img, images[k]) and np.array_equal(gt, masks[k])


@pytest.fixture
def mat(tmp_path):
    images, masks = source_images()
    write_mat(tmp_path / "gtsegs_ijcv.mat", images, masks)
    return tmp_path / "gtsegs_ijcv.mat", images


def test_images_and_masks_come_back_upright_at_the_model_size(mat):
    path, images = mat
    ds = load_dataset(f"imagenet-seg:{path}", "val", 16)
    assert len(ds) == 6 and ds.images.shape == (6, 16, 16, 3) and not ds.labeled
    got = np.asarray(ds.images[np.array([4, 1])])
    for row, k in zip(got, (4, 1)):   # the file's image k, through vitscope's resize policy
        assert np.array_equal(row, prepare_image(Image.fromarray(images[k]), 16))
    masks = ds.masks[:]
    # the top 10 of 20 rows -> the top 8 of 16 rows (nearest), every column of the crop
    assert masks.shape == (6, 16, 16) and masks[:, :8].all() and not masks[:, 8:].any()


def test_reading_is_lazy(mat, monkeypatch):
    path, _ = mat
    read = []
    real = imagenet_seg.read_pair
    monkeypatch.setattr(imagenet_seg, "read_pair",
                        lambda f, k, pixels=True: read.append(k) or real(f, k, pixels))
    ds = load_dataset(f"imagenet-seg:{path}", "all", 16)
    assert read == [0]                          # the layout check reads one image
    ds.images[np.array([5, 2])]
    assert read == [0, 5, 2]
    assert ds.fingerprint() == load_dataset(f"imagenet-seg:{path}", "all", 16).fingerprint()
    assert read == [0, 5, 2, 0]                 # a fingerprint reads no pixels


def test_bad_files_are_one_sentence(tmp_path, mat):
    path, images = mat
    cases = {"missing.mat": "does not exist", "notes.mat": "not a MATLAB v7.3"}
    (tmp_path / "notes.mat").write_text("MATLAB 5.0 MAT-file")
    with h5py.File(tmp_path / "other.mat", "w") as f:
        f["value/img"] = np.zeros((3, 1))
    cases["other.mat"] = "no N×1 array of references at /value/img"
    truncated = tmp_path / "truncated.mat"
    truncated.write_bytes(path.read_bytes()[:2000])
    cases["truncated.mat"] = "cannot be read|not a MATLAB"
    for name, message in cases.items():
        with pytest.raises(DataError, match=message) as e:
            load_dataset(f"imagenet-seg:{tmp_path / name}", "val", 16)
        assert "\n" not in str(e.value)
    fewer = tmp_path / "fewer.mat"
    write_mat(fewer, images, source_images()[1][:, :, :W - 2])   # masks of another size
    with pytest.raises(DataError, match=r"mask of image 0 .* is 20×26 but the image is 20×28"):
        load_dataset(f"imagenet-seg:{fewer}", "val", 16)
    with pytest.raises(DataError, match="names no file"):
        load_dataset("imagenet-seg:", "val", 16)


def test_score_localises_on_the_benchmark(shapes_ckpt, mat, tmp_path, monkeypatch):
    path, _ = mat
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["score", str(shapes_ckpt), "-p", "rollout", "-n", "4",
                                    "--draws", "1", "--data", f"imagenet-seg:{path}"])
    assert res.exit_code == 0, res.output
    assert "Localisation on the object masks" in res.output
    report = json.loads((tmp_path / "outputs" / "run" / "score" / "score.json").read_text())
    assert report["images"] == 4 and report["target"] == "pred"
    loc = report["baselines"]["localization"]
    # the mask is the top half: a uniform map has half its mass there, and brightness (the
    # bright top half) always points into it
    assert loc["uniform"]["mass_in_mask"]["mean"] == pytest.approx(0.5)
    assert loc["brightness"]["pointing"]["mean"] == pytest.approx(1.0)
    assert report["methods"]["rollout"]["localization"]["pointing"]["n"] == 4
    assert "uniform" in report["methods"]["rollout"]["localization"]["vs"]


def test_a_missing_file_stops_score_before_work(shapes_ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["score", str(shapes_ckpt), "-p", "rollout", "-n", "4",
                                    "--data", f"imagenet-seg:{tmp_path / 'gone.mat'}"])
    assert res.exit_code != 0 and "does not exist" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "outputs").exists()
