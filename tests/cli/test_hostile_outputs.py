"""Fault suite, commands that write results (#26 items 2, 5, 7, 12, 13, 15, 16): `score`
staged and locked like analyze, on a full disk too; `compare` and `animate` locked, never
writing through a link planted at a temporary name; SIGTERM during `compare`, `animate` and
`dump merge` leaving nothing behind and a killed one's leftovers swept; a merged dump whose
shard was captured again; a folder without class folders; a metrics line nested 200,000 deep.
Each through the real CLI."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from faultkit import ROOT, cli, held_elsewhere, one_error_line, snapshot
from vitscope.data.shapes import CLASSES
from vitscope.model.checkpoint import save_checkpoint
from vitscope.model.vit import ModelConfig, ViT

DEEP = "[" * 200_000 + "]" * 200_000


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)      # captured dumps go to ./outputs/dumps here


def checkpoint(path: Path, seed: int, epochs: int = 2, deep: bool = True) -> Path:
    """A tiny ViT on `shapes` with a metrics.jsonl beside it (with `deep`, a line nested
    200,000 deep among its lines)."""
    torch.manual_seed(seed)
    model = ViT(ModelConfig(image_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                            mlp_ratio=2.0, num_classes=len(CLASSES))).eval()
    save_checkpoint(path, model, classes=list(CLASSES),
                    train_config={"data": "shapes:val=16", "image_size": 16,
                                  "normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}},
                    metrics={"epoch": epochs, "val_acc": 0.25})
    lines = [json.dumps({"epoch": e, "train_loss": 1.0 / e, "val_acc": 0.25}) for e in
             range(1, epochs + 1)]
    (path.parent / "metrics.jsonl").write_text(
        "\n".join([lines[0], *([DEEP] if deep else []), *lines[1:]]) + "\n")
    return path


def driver(tmp_path: Path, patch: str, args: list) -> subprocess.CompletedProcess:
    """`vitscope ARGS` in a child process that sends itself SIGTERM at the worst moment:
    `patch` replaces one function so that the signal arrives while temporaries exist."""
    script = tmp_path / f"driver_{uuid.uuid4().hex[:6]}.py"
    script.write_text(textwrap.dedent(patch) + textwrap.dedent(f'''
        import sys
        from vitscope.cli import main
        sys.argv = ["vitscope", *{[str(a) for a in args]!r}]
        main()
    '''))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


# Every write-then-rename (compare, animate): the signal arrives with the temporaries half
# written, inside the helper's block.
TERM_IN_REPLACING = '''
    import contextlib, os, signal
    import vitscope._internal.files as files
    real = files.replacing

    @contextlib.contextmanager
    def replacing(*paths, **kwargs):
        with real(*paths, **kwargs) as temps:
            for t in temps:
                open(t, "wb").write(b"half")
            os.kill(os.getpid(), signal.SIGTERM)
            yield temps
    files.replacing = replacing
'''

TERM_IN_MERGE = '''
    import importlib, os, signal
    merge = importlib.import_module("vitscope.dump.merge")   # the package exports merge()
    real = merge._write_virtual

    def _write_virtual(*args):
        real(*args)
        os.kill(os.getpid(), signal.SIGTERM)     # written, not yet published
    merge._write_virtual = _write_virtual
'''


def dead_pid() -> str:
    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).rglob("*") if ".tmp-" in p.name
                  or p.name.endswith(".partial")
                  or p.name.startswith((".vitscope-new-", ".vitscope-old-", ".vitscope-commit-")))


# ------------------------------------------------------------------------------ compare

@pytest.fixture
def two(tmp_path):
    return checkpoint(tmp_path / "a" / "best.pt", 0), checkpoint(tmp_path / "b" / "best.pt", 1)


def test_compare_never_writes_through_links_at_temporary_names(tmp_path):
    a = checkpoint(tmp_path / "a" / "best.pt", 0, deep=False)
    b = checkpoint(tmp_path / "b" / "best.pt", 1, deep=False)
    out = tmp_path / "cmp"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for pid in range(os.getpid(), os.getpid() + 64):      # the next PIDs, as the issue planted
        for name in (f".compare.tmp-{pid}.json", f".compare_accuracy.tmp-{pid}.png"):
            os.symlink(victim, out / name)
    for name in ("compare.json.tmp", ".compare.json.tmp"):
        os.symlink(victim, out / name)
    result = cli("compare", a, b, "-o", out)
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "precious"
    assert (out / "compare.json").is_file() and not (out / "compare.json").is_symlink()
    assert json.loads((out / "compare.json").read_text())["n"] == 16


def test_compare_is_locked_and_sigterm_leaves_nothing(two, tmp_path):
    a, b = two
    out = tmp_path / "cmp"
    assert cli("compare", a, b, "-o", out).exit_code == 0   # the line 200k deep: skipped
    info = json.loads((out / "compare.json").read_text())["model_info"]
    assert [h["epoch"] for h in info[0]["history"]] == [1, 2]           # item 13
    before = snapshot(out)
    with held_elsewhere(out / ".vitscope.lock"):        # another compare (or analyze) writing
        one_error_line(cli("compare", a, b, "-o", out, "--tta"), "is in use by process")
    assert snapshot(out) == before
    # a killed compare's temporary, then one that gets SIGTERM while writing its own
    from vitscope._internal.files import host_tag
    stale = out / f".compare.json.x1y2.tmp-{host_tag()}-{dead_pid()}.json"
    stale.write_text("{")
    result = driver(tmp_path, TERM_IN_REPLACING, ["compare", a, b, "-o", out, "--tta"])
    assert result.returncode == 143 and "Traceback" not in result.stderr, result.stderr
    assert leftovers(out) == [] and snapshot(out) == before   # swept, cleaned, unchanged


def test_compare_on_a_folder_without_class_folders_is_one_sentence(two, tmp_path):
    a, b = two
    images = tmp_path / "flat"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
            images / f"cat_{i}.png")
    one_error_line(cli("compare", a, b, "--data", f"folder:{images}", "-o", tmp_path / "c"),
                   "has no labels (no class folders)")
    assert not (tmp_path / "c").exists()
    shipped = ROOT / "examples" / "images"
    one_error_line(cli("compare", a, b, "--data", f"folder:{shipped}", "-o", tmp_path / "c"),
                   "has no labels")


# ------------------------------------------------------------------------------ animate

@pytest.fixture
def epochs(tmp_path):
    """What `train --analyze-every 1 --plugin rollout` leaves: epoch folders with a figure,
    and the run's metrics.jsonl (with a line nested 200,000 deep)."""
    out = tmp_path / "outputs" / "an"
    rng = np.random.default_rng(0)
    for e in (1, 2):
        folder = out / f"epoch_{e:03d}" / "rollout"
        folder.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(
            folder / "rollout.png")
    run = tmp_path / "runs" / "an"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("\n".join([
        json.dumps({"epoch": 1, "val_acc": 0.5}), DEEP, json.dumps({"epoch": 2, "val_acc": 0.75})])
        + "\n")
    return out, run


def test_animate_reads_a_deep_metrics_line_is_locked_and_sigterm_leaves_nothing(epochs, tmp_path):
    out, run = epochs
    result = cli("animate", out, "-p", "rollout", "--run", run)
    assert result.exit_code == 0, result.output                          # item 13
    record = json.loads((out / "animations" / "rollout.json").read_text())
    assert [f["val_acc"] for f in record["frames"]] == [0.5, 0.75]
    before = snapshot(out / "animations")
    with held_elsewhere(out / "animations" / ".vitscope.lock"):
        one_error_line(cli("animate", out, "-p", "rollout", "--run", run, "--width", 100),
                       "is in use by process")
    result = driver(tmp_path, TERM_IN_REPLACING,
                    ["animate", out, "-p", "rollout", "--run", run, "--width", 100])
    assert result.returncode == 143 and "Traceback" not in result.stderr, result.stderr
    assert leftovers(out) == [] and snapshot(out / "animations") == before


# ------------------------------------------------------------------------------ dump merge

def test_merge_verifies_its_shards_and_sigterm_leaves_no_partial(tmp_path):
    ckpt = checkpoint(tmp_path / "m" / "best.pt", 0)
    shards = tmp_path / "shards"
    for i in range(2):
        assert cli("dump", ckpt, "--limit", 16, "--shard", f"{i}/2", "--hooks", "cls", "-q",
                   "-o", shards / "s.h5").exit_code == 0
    parts = [shards / "s-shard0of2.h5", shards / "s-shard1of2.h5"]
    from vitscope._internal.files import host_tag
    stale = shards / f"m.h5.{host_tag()}-{dead_pid()}-abc123.partial"
    stale.write_bytes(b"\x89HDF")                         # what a killed merge leaves
    result = driver(tmp_path, TERM_IN_MERGE, ["dump", "merge", *parts, "-o", shards / "m.h5"])
    assert result.returncode == 143 and "Traceback" not in result.stderr, result.stderr
    # its own partial removed on SIGTERM, the killed one's swept when it started
    assert not (shards / "m.h5").exists() and leftovers(shards) == []
    assert cli("dump", "merge", *parts, "-o", shards / "m.h5").exit_code == 0
    assert cli("dump", "info", shards / "m.h5").exit_code == 0
    # shard 1 captured again (other images of the same size) after the merge
    assert cli("dump", ckpt, "--data", "shapes:val=32", "--limit", 16, "--shard", "1/2",
               "--hooks", "cls", "-q", "-o", shards / "s.h5", "--force").exit_code == 0
    for args in (("dump", "info", shards / "m.h5"),
                 ("analyze", "--dump", shards / "m.h5", "-p", "cls-embedding",
                  "--opt", "cls-embedding.umap=false", "-o", tmp_path / "out")):
        one_error_line(cli(*args), "whose shard 's-shard1of2.h5' is not the file that was "
                                   "merged", "merge the shards again")


# ------------------------------------------------------------------------------ score

@pytest.fixture
def scored(tmp_path):
    return checkpoint(tmp_path / "s" / "best.pt", 0)


@pytest.mark.timeout(240)     # the old code waited for the lock forever
def test_a_second_score_into_one_folder_is_told_at_once(scored, tmp_path):
    out = tmp_path / "run"
    with held_elsewhere(out / ".vitscope.lock"):
        one_error_line(cli("score", scored, "-p", "rollout", "-n", 4, "-o", out),
                       "is in use by process")
    assert not (out / "score").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 12 MB tmpfs (as root; the CI VM is), else skipped: score writes plotly.js (4.8 MB)."""
    root = tmp_path / "disk"
    root.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount") or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=12m", f"vitscope-{uuid.uuid4().hex[:8]}",
             str(root)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield root
    subprocess.run(["umount", "-l", str(root)], capture_output=True)


def test_score_on_a_full_disk_keeps_the_earlier_score_whole(scored, small_disk):
    out = small_disk / "run"
    result = cli("score", scored, "-p", "rollout", "-n", 4, "-o", out)
    assert result.exit_code == 0, result.output
    before = snapshot(out)
    free = shutil.disk_usage(small_disk).free
    with open(small_disk / ".filler", "wb") as f:
        f.write(b"\0" * max(0, free - 40_000))
    result = cli("score", scored, "-p", "rollout", "-n", 4, "-o", out, "--seed", 1)
    line = one_error_line(result, "Cannot write", "No space left on device",
                          "is as it was", codes=(1,))
    assert str(out) in line
    assert snapshot(out) == before and leftovers(out) == []   # no half score, no temporaries
