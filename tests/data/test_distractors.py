"""`shapes:distractors`: a class shape beside a distractor that is never a class. Image-only
maps (brightness, edges), a centre prior and a uniform map must point at the class shape at
most about as often as chance among the objects (1 in 2), unlike on `shapes`, where brightness
points at the object on every image."""
from __future__ import annotations

import numpy as np
import pytest

from vitscope.data import distractors as D
from vitscope.data import load_dataset
from vitscope.errors import DataError
from vitscope.score.localization import baseline_maps, patch_coverage, pointing

CHANCE = 1 / (1 + D.DISTRACTORS)      # the class shape among the objects
SLACK = 0.07                          # "about": 1,000 images give a standard error near 0.016


def test_image_only_maps_point_at_the_class_shape_no_more_than_chance():
    ds = load_dataset("shapes:distractors", "val", 32)          # the 1,000 default val images
    assert ds.classes == D.CLASSES and len(ds) == 1000
    cov = patch_coverage(ds.masks, (8, 8))
    maps = baseline_maps(ds.images, (8, 8))
    hits = {name: float(pointing(m, cov).mean()) for name, m in maps.items()}
    for name in ("brightness", "edges", "centre", "uniform"):
        assert hits[name] <= CHANCE + SLACK, hits
    # on plain shapes, brightness finds the one object nearly always: the contrast that matters
    plain = load_dataset("shapes:val=300", "val", 32)
    plain_cov = patch_coverage(plain.masks, (8, 8))
    assert pointing(baseline_maps(plain.images, (8, 8))["brightness"], plain_cov).mean() > 0.9


def test_the_mask_covers_the_class_shape_only_and_objects_do_not_overlap():
    ds = load_dataset("shapes:distractors,val=200,seed=3", "val", 32)
    again = load_dataset("shapes:distractors,val=200,seed=3", "val", 32)
    assert np.array_equal(ds.images, again.images) and np.array_equal(ds.masks, again.masks)
    area = ds.masks.reshape(len(ds), -1).mean(axis=1)
    # one object of radius 0.18-0.25 of the side: its mask is far from all the lit pixels
    assert 0.01 < area.min() and area.max() < 0.2
    # the image holds more lit (object) pixels than the mask: the distractor is there, unmasked
    gray = ds.images.mean(-1)
    background = np.median(gray.reshape(len(ds), -1), axis=1)[:, None, None]
    lit = (gray > background + 0.25 * 255)
    outside = (lit & ~ds.masks).reshape(len(ds), -1).sum(axis=1)
    assert np.median(outside) > 0.5 * np.median(ds.masks.reshape(len(ds), -1).sum(axis=1))
    counts = np.bincount(ds.labels, minlength=len(D.CLASSES))
    assert counts.min() == counts.max() == 40                     # balanced classes


def test_a_bad_option_is_one_sentence():
    with pytest.raises(DataError, match="Unknown option 'tran'"):
        load_dataset("shapes:distractors,tran=10", "val", 32)
