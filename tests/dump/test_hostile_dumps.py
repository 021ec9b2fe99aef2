"""Fault suite, dumps: malformed and hostile HDF5 files built here, read by `vitscope dump info`
and `vitscope analyze --dump`. One validated reading (vitscope.dump.check, run by Dump.open)
gives each "FILE is not a valid vitscope dump: REASON" before any data is read, and never
lets a dump read a file outside itself or pass off garbage numbers."""
from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from faultkit import cli, one_error_line, snapshot
from vitscope.capture import capture
from vitscope.model.checkpoint import load_model
from vitscope.data import load_dataset
from vitscope.dump import Dump, merge

HOOKS = ["cls", "blocks.*.attn.weights"]
SECRET = b"SECRET-BYTES-" * 400


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A real single dump and a real merged dump of two shards, from one tiny checkpoint."""
    from vitscope.testing import make_dump
    root = tmp_path_factory.mktemp("faults-dump")
    ckpt = root / "run" / "best.pt"
    single = make_dump(root / "good" / "d.h5", n=8, hooks=HOOKS, checkpoint=ckpt)
    model, ck = load_model(ckpt)
    data = load_dataset(ck.train_config["data"], "val", 16)
    shards = [capture(model, data, root / "merged" / f"s{i}.h5", HOOKS, ckpt=ck, shard=(i, 2),
                      batch_size=4) for i in (0, 1)]
    merge(shards, root / "merged" / "m.h5")
    secret = root / "elsewhere" / "secret.bin"
    secret.parent.mkdir()
    secret.write_bytes(SECRET)
    shutil.copy(single, root / "elsewhere" / "other.h5")
    return {"single": single, "merged": root / "merged" / "m.h5", "secret": secret,
            "other": root / "elsewhere" / "other.h5"}


def replace(f, key, **kwargs):
    del f[key]
    return f.create_dataset(key, **kwargs)


def external_storage(f, made):
    replace(f, "images", shape=(8, 16, 16, 3), dtype="u1",
            external=[(str(made["secret"]), 0, h5py.h5f.UNLIMITED)])


def virtual_outside(f, made):
    layout = h5py.VirtualLayout(shape=(8, 16, 16, 3), dtype="u1")
    layout[:] = h5py.VirtualSource(str(made["other"]), "images", shape=(8, 16, 16, 3))
    del f["images"]
    f.create_virtual_dataset("images", layout)


def scale_attention(factor):
    def edit(f, made):
        ds = f["acts/blocks.0.attn.weights"]
        ds[:] = ds[:] * factor
    return edit


def set_attr(key, value):
    return lambda f, made: f.attrs.__setitem__(key, value)


def hook_group(f, made):
    del f["acts/cls"]
    f.create_group("acts/cls")


def soft(target, *extra):
    def edit(f, made):
        del f["acts/cls"]
        f["acts/cls"] = h5py.SoftLink(target)
        for name, to in extra:
            f[name] = h5py.SoftLink(to)
    return edit


def external_link(f, made):
    del f["acts/cls"]
    f["acts/cls"] = h5py.ExternalLink(str(made["other"]), "/acts/cls")


def external_group_link(f, made):
    f["extra"] = h5py.ExternalLink(str(made["other"]), "/")


def nan_attention(f, made):
    ds = f["acts/blocks.1.attn.weights"]
    a = ds[:]
    a[:, 1, 3, :] = np.nan   # row 3 of head 1, in every image (only a sample is read)
    ds[:] = a


# (id, edit of a copy of the single dump, words of the one error line). The first 8 once
# ended in tracebacks (in `dump info` and `analyze --dump`), then links outside the file and
# garbage numbers.
CASES = [
    ("integer-class-names", set_attr("classes", json.dumps(list(range(10)))),
     "attribute 'classes' must be a list of strings, not [0, 1, 2"),
    ("missing-dims", lambda f, m: f["acts/cls"].attrs.__delitem__("dims"),
     "hook /acts/cls has no dims attribute"),
    ("hook-is-a-group", hook_group, "hook /acts/cls is a group, not a dataset"),
    ("dangling-soft-link", soft("/nowhere"), "soft link /acts/cls to /nowhere, which does not exist"),
    ("soft-link-loop", soft("/acts/loop", ("acts/loop", "/acts/cls")), "that loops"),
    ("json-10000-deep", set_attr("classes", "[" * 10000 + "]" * 10000),
     "attribute 'classes' nests 10,000 levels deep, more than the 32 allowed"),
    ("merged-from-unparsable", set_attr("merged_from", "{not json"),
     "attribute 'merged_from' is not valid JSON"),
    ("json-too-big", set_attr("model_config", json.dumps({"x": "y" * (9 << 20)})),
     "attribute 'model_config' is 9,437,193 bytes, more than the 8,388,608 allowed"),
    # a dump must never read a file outside itself
    ("external-raw-storage", external_storage, "stores dataset /images in the external file(s)"),
    ("external-link", external_link, "external link /acts/cls to"),
    ("external-link-to-a-group", external_group_link, "external link /extra to"),
    ("virtual-dataset-not-merged", virtual_outside, "virtual dataset /images (reading"),
    # numbers that would render "ok" with garbage in them
    ("attention-nan", nan_attention, "attention /acts/blocks.1.attn.weights holds NaN"),
    ("attention-zero", scale_attention(0), "attention /acts/blocks.0.attn.weights is not softmax"),
    ("attention-not-normalised", scale_attention(2), "sums to 2 instead of 1 in image"),
    ("complete-string-false", set_attr("complete", "false"),
     "incomplete dump (its complete attribute is 'false', not true)"),
    ("complete-integer", set_attr("complete", 1), "its complete attribute is 1, not true"),
    ("labels-short", lambda f, m: replace(f, "labels", data=np.zeros(5, np.int64)),
     "its num_images attribute says 8 but /labels holds 5"),
    ("hook-rows-short", lambda f, m: replace(f, "acts/cls", data=np.zeros((5, 32), "f2")).attrs
     .__setitem__("dims", ["N", "D"]), "hook /acts/cls has 5 along N (axis 0) but the dump has 8 images"),
    ("tokens-disagree-with-layout", set_attr("token_layout", json.dumps(
        {"num_prefix_tokens": 1, "prefix": [["cls", 1]], "grid": [2, 2], "patch_size": [8, 8],
         "image_size": [16, 16]})), "has 17 along T (axis 2) but the dump has 5 tokens in the layout"),
    ("logits-not-one-per-class", lambda f, m: replace(f, "logits", data=np.zeros((8, 3), "f4")),
     "/logits is 8×3 float32, expected N×10 floats (one per class)"),
    ("labels-out-of-range", lambda f, m: f["labels"].__setitem__(slice(0, 1), 99),
     "/labels holds 99, outside -1..9"),
    ("dims-wrong-length", lambda f, m: f["acts/cls"].attrs.__setitem__("dims", ["N"]),
     "hook /acts/cls has dims ['N'] for a 2-d dataset"),
    ("aliases-dangling", set_attr("aliases", json.dumps({"norm.in": "blocks.9.out"})),
     "its aliases name 'norm.in' -> 'blocks.9.out', which it does not hold"),
    ("version-not-int", set_attr("version", "2"), "has no valid dump format version ('2')"),
]


def hostile(tmp_path, made, edit):
    path = tmp_path / "dumps" / "x.h5"
    path.parent.mkdir()
    shutil.copy(made["single"], path)
    with h5py.File(path, "r+") as f:
        edit(f, made)
    return path


COMMANDS = {
    "dump-info": lambda dump, out: ["dump", "info", dump],
    "analyze": lambda dump, out: ["analyze", "--dump", dump, "--plugin", "rollout", "-o", out],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case, edit, words", CASES, ids=[c[0] for c in CASES])
def test_every_malformed_dump_is_one_sentence_and_nothing_is_written(
        tmp_path, made, case, edit, words, command):
    path = hostile(tmp_path, made, edit)
    before = snapshot(tmp_path)
    line = one_error_line(cli(*COMMANDS[command](path, tmp_path / "out")), words, str(path))
    assert line.count(". ") == 0, line
    assert snapshot(tmp_path) == before
    assert SECRET[:40].decode() not in line


def merged_copy(tmp_path, made):
    folder = tmp_path / "merged"
    shutil.copytree(made["merged"].parent, folder)
    return folder / "m.h5"


def retarget(f, key, source):
    """Point the first half of merged virtual dataset `key` at `source` (a file name)."""
    ds = f[key]
    shape, half = ds.shape, ds.shape[0] // 2
    layout = h5py.VirtualLayout(shape=shape, dtype=ds.dtype)
    layout[:half] = h5py.VirtualSource(source, key, shape=shape)[:half]
    layout[half:] = h5py.VirtualSource("s1.h5", key, shape=(shape[0] - half, *shape[1:]))
    attrs = dict(ds.attrs)
    del f[key]
    f.create_virtual_dataset(key, layout, fillvalue=0).attrs.update(attrs)


@pytest.mark.parametrize("case, words", [
    ("source-not-a-named-shard", "virtual dataset /images reading '../elsewhere/other.h5', which is not one of the shards"),
    ("merged-from-outside", "merged_from names the shard '../elsewhere/other.h5', which is not a file inside"),
    ("merged-from-absolute", "merged_from names the shard '/"),
    ("shard-with-external-storage", "its shard 's1.h5' stores dataset /images in the external file(s)"),
    ("shard-with-external-link", "its shard 's0.h5' has an external link /acts/cls"),
    ("shard-missing", "shard 's1.h5' is missing next to it"),
])
def test_a_merged_dump_reads_only_its_own_shards(tmp_path, made, case, words):
    path = merged_copy(tmp_path, made)
    shutil.copytree(made["other"].parent, tmp_path / "elsewhere")
    if case == "source-not-a-named-shard":
        with h5py.File(path, "r+") as f:
            retarget(f, "images", "../elsewhere/other.h5")
    elif case == "merged-from-outside":
        with h5py.File(path, "r+") as f:
            f.attrs["merged_from"] = json.dumps(["s0.h5", "../elsewhere/other.h5"])
    elif case == "merged-from-absolute":
        with h5py.File(path, "r+") as f:
            f.attrs["merged_from"] = json.dumps([str(path.parent / "s0.h5"), "s1.h5"])
    elif case == "shard-with-external-storage":
        with h5py.File(path.parent / "s1.h5", "r+") as f:
            replace(f, "images", shape=(4, 16, 16, 3), dtype="u1",
                    external=[(str(tmp_path / "elsewhere" / "secret.bin"), 0, h5py.h5f.UNLIMITED)])
    elif case == "shard-with-external-link":
        with h5py.File(path.parent / "s0.h5", "r+") as f:
            del f["acts/cls"]
            f["acts/cls"] = h5py.ExternalLink(str(tmp_path / "elsewhere" / "other.h5"), "/acts/cls")
    elif case == "shard-missing":
        (path.parent / "s1.h5").unlink()
    before = snapshot(tmp_path)
    for args in (["dump", "info", path], ["analyze", "--dump", path, "--plugin", "rollout",
                                          "-o", tmp_path / "out"]):
        line = one_error_line(cli(*args), words, str(path))
        assert line.count(". ") == 0 and SECRET[:40].decode() not in line
    assert snapshot(tmp_path) == before


def test_a_merged_dump_of_real_shards_still_opens_and_renders(tmp_path, made):
    path = merged_copy(tmp_path, made)
    with Dump.open(path) as dump:
        assert len(dump) == 8 and dump["cls"].is_virtual
    result = cli("analyze", "--dump", path, "--plugin", "rollout", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "index.html").is_file()


def test_merge_refuses_to_write_a_dump_that_could_not_open(tmp_path, made):
    """A merged file reads its shards from its own folder: one written elsewhere would be
    refused at open, so merge refuses to write it."""
    folder = merged_copy(tmp_path, made).parent
    result = cli("dump", "merge", folder / "s0.h5", folder / "s1.h5", "-o",
                 tmp_path / "beside" / "m.h5")
    one_error_line(result, "is not inside the folder of -o", "write it beside the shards")
    assert not (tmp_path / "beside").exists()
    result = cli("dump", "merge", folder / "s0.h5", folder / "s1.h5", "-o", tmp_path / "up.h5")
    assert result.exit_code == 0, result.output   # a folder above the shards is fine
    with Dump.open(tmp_path / "up.h5") as dump:
        assert len(dump) == 8
