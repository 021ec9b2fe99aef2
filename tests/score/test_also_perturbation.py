"""`score_checkpoint(also=[...])`: the deletion and insertion curves under a further
perturbation, on the same orders as the ranking one, equal a separate score run with that
perturbation (same seed, so the same tie orders and random order), and leave the ranking
perturbation's numbers as they were."""
from __future__ import annotations

import os

import pytest

from vitscope.analyze.registry import discover
from vitscope.score.run import score_checkpoint


def _auc(row):
    return row["deletion_auc"].mean, row["insertion_auc"].mean


def test_also_grey_equals_a_grey_run(shapes_ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    entries = discover().select(["rollout", "gradcam"])
    common = dict(images=8, device="cpu", draws=1)
    both = score_checkpoint(shapes_ckpt, entries, perturbation="drop", also=["grey"], **common)
    grey = score_checkpoint(shapes_ckpt, entries, perturbation="grey", **common)
    drop = score_checkpoint(shapes_ckpt, entries, perturbation="drop", **common)
    assert both["perturbation"] == "drop"
    for name in ("rollout", "gradcam"):
        m = both["methods"][name]
        assert _auc(m["faithfulness"]) == pytest.approx(_auc(drop["methods"][name]["faithfulness"]))
        assert _auc(m["faithfulness_by_perturbation"]["grey"]) == pytest.approx(
            _auc(grey["methods"][name]["faithfulness"]))
        assert _auc(m["faithfulness"]) != pytest.approx(_auc(grey["methods"][name]["faithfulness"]))
    for b, row in both["baselines"]["faithfulness_by_perturbation"]["grey"].items():
        assert _auc(row) == pytest.approx(_auc(grey["baselines"]["faithfulness"][b]))
    assert "faithfulness_by_perturbation" not in drop["methods"]["rollout"]
    assert os.listdir(tmp_path)   # the dumps it captured live under the working folder
