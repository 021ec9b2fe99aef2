"""The built-in `shapes` data, the spec parser, val_split, and the normalisation helpers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vitscope.data import (ImageDataset, dataset_stats, load_dataset, normalization, parse_spec,
                           to_model_input)
from vitscope.data.shapes import CLASSES
from vitscope.errors import ConfigError, DataError, VitscopeError

SMALL = "shapes:train=200,val=60"


def test_shapes_is_deterministic_and_seeded():
    a = load_dataset(SMALL, "train", 24)
    b = load_dataset(SMALL, "train", 24)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    assert np.array_equal(a.labels, b.labels)
    other = load_dataset(SMALL + ",seed=1", "train", 24)
    assert not np.array_equal(a.images, other.images)
    # the training seed (the argument) does not change the data, only the spec's seed does
    assert np.array_equal(load_dataset(SMALL, "train", 24, seed=5).images, a.images)
    val = load_dataset(SMALL, "val", 24)
    assert not np.array_equal(a.images[:60], val.images)  # train and val use different streams


def test_shapes_layout_size_and_balance():
    ds = load_dataset(SMALL, "train", 24)
    assert isinstance(ds, ImageDataset)
    assert ds.images.shape == (200, 24, 24, 3) and ds.images.dtype == np.uint8
    assert ds.masks.shape == (200, 24, 24) and ds.masks.dtype == bool
    assert ds.labels.dtype == np.int64 and ds.classes == CLASSES and len(set(CLASSES)) == 10
    assert np.bincount(ds.labels, minlength=10).tolist() == [20] * 10
    assert ds.spec == SMALL and ds.split == "train" and ds.paths is None
    assert load_dataset("shapes:val=10", "val", 48).images.shape == (10, 48, 48, 3)


def test_masks_cover_the_shape():
    ds = load_dataset(SMALL, "val", 32)
    area = ds.masks.reshape(len(ds), -1).mean(1)
    assert (area > 0.02).all() and (area < 0.7).all()
    # The shape is lighter than its background in every channel: mask pixels must be too.
    img = ds.images.astype(np.float32)
    m = ds.masks[..., None]
    inside = (img * m).sum((1, 2)) / m.sum((1, 2))
    outside = (img * ~m).sum((1, 2)) / (~m).sum((1, 2))
    assert (inside - outside > 40).all()
    # Each class has its own silhouette: the mean mask area differs between a bar and a disk.
    by_class = [area[ds.labels == k].mean() for k in range(10)]
    assert by_class[CLASSES.index("disk")] > 2 * by_class[CLASSES.index("bar")]


@pytest.mark.parametrize("spec, fragment", [
    ("cifar1O", "Did you mean 'cifar10'"),
    ("shape", "Did you mean 'shapes'"),
    ("imagenet", "Valid: shapes"),
    ("shapes:trian=5", "did you mean 'train'"),
    ("shapes:train=-3", "positive integer"),
    ("shapes:train", "positive integer"),
    ("folder:", "names no folder"),
    ("", "No dataset given"),
])
def test_bad_specs_get_one_sentence(spec, fragment):
    with pytest.raises(DataError) as e:
        load_dataset(spec)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_a_bare_directory_suggests_folder_spec(tmp_path):
    with pytest.raises(DataError, match=f"Did you mean 'folder:{tmp_path}'"):
        parse_spec(str(tmp_path))


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="split"):
        load_dataset(SMALL, "test")
    with pytest.raises(ConfigError, match="val_split"):
        load_dataset(SMALL, val_split=1.5)
    with pytest.raises(ConfigError, match="image_size"):
        load_dataset(SMALL, image_size=2)


def test_val_split_is_disjoint_deterministic_and_complete():
    full = load_dataset(SMALL, "train", 16)
    train = load_dataset(SMALL, "train", 16, val_split=0.25)
    val = load_dataset(SMALL, "val", 16, val_split=0.25)
    assert (len(train), len(val)) == (150, 50) and val.split == "val"
    key = lambda ds: {img.tobytes() for img in ds.images}  # noqa: E731
    assert not key(train) & key(val)
    assert key(train) | key(val) == key(full)
    again = load_dataset(SMALL, "val", 16, val_split=0.25)
    assert np.array_equal(val.images, again.images) and np.array_equal(val.masks, again.masks)
    assert not np.array_equal(load_dataset(SMALL, "val", 16, val_split=0.25, seed=3).images, val.images)
    with pytest.raises(DataError, match="leaves no validation"):
        load_dataset(SMALL, "val", 16, val_split=0.001)


def test_dataset_stats_matches_numpy():
    ds = load_dataset(SMALL, "val", 16)
    mean, std = dataset_stats(ds)
    x = ds.images.reshape(-1, 3) / 255.0
    assert np.allclose(mean, x.mean(0), atol=1e-6) and np.allclose(std, x.std(0), atol=1e-6)
    with pytest.raises(DataError):
        dataset_stats(np.zeros((0, 4, 4, 3), np.uint8))


def test_normalization_from_checkpoint_or_fallback(tiny_ckpt):
    from vitscope.model.checkpoint import load_checkpoint

    assert normalization(load_checkpoint(tiny_ckpt)) == ([0.5] * 3, [0.5] * 3)  # none stored
    assert normalization(None) == ([0.5] * 3, [0.5] * 3)
    tc = {"normalize": {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}}
    assert normalization(tc) == ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    with pytest.raises(VitscopeError, match="invalid train_config"):
        normalization({"normalize": {"mean": [0.1], "std": [0, 1, 1]}})


def test_to_model_input():
    images = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]
    x = to_model_input(images, mean, std)
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32 and x.device == images.device
    expected = (images.permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) \
        / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(x, expected, atol=1e-6)
    assert images.dtype == torch.uint8  # the input is not modified
    with pytest.raises(DataError):
        to_model_input(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), mean, std)


def test_no_centre_prior_on_the_val_split():
    """Objects sit anywhere (on the torus): a centred Gaussian puts as much of its mass in the
    masks as a uniform map does (the mask area) and points no better than a random patch."""
    from vitscope.score.localization import baseline_maps, patch_coverage, mass_in_mask, pointing
    ds = load_dataset("shapes", "val", 32)                      # the 2,000 default val images
    grid = (8, 8)                                                # patch_size 4, as shapes-quick
    cov = patch_coverage(ds.masks, grid)
    maps = baseline_maps(ds.images, grid)
    area = cov.mean()
    centre_mass = np.nanmean(mass_in_mask(maps["centre"], cov))
    random_patch = pointing(maps["uniform"], cov).mean()
    assert abs(centre_mass - area) < 0.02, (centre_mass, area)
    assert abs(pointing(maps["centre"], cov).mean() - random_patch) < 0.05
    # and what the old placement had: the shapes' 2×2 centre patches almost always on the object
    assert (cov[:, 3:5, 3:5] >= 0.5).any(axis=(1, 2)).mean() < 0.5
