"""Fault suite, `vitscope import` (#26 items 1, 2, 3, 6, 8, 10, 16): a model folder that asks
to run its own code or to reach the Hub, config and preprocessing files that lie about sizes
or are not JSON, checkpoints that every other command would refuse, two imports into one path,
a link at the old temporary name, and kills. Each ends in a correct run or one sentence, with
no file written and no code run."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from faultkit import ROOT, cli, held_elsewhere, one_error_line, snapshot

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")
pytest.importorskip("timm")


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def hf_base(tmp_path_factory):
    """A tiny saved ViTForImageClassification (config.json, model.safetensors)."""
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=64, image_size=32, patch_size=8,
                                    num_labels=2)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hf") / "vit"
    transformers.ViTForImageClassification(config).eval().save_pretrained(folder)
    return folder


def folder_with(base, tmp_path, name, config=None, raw=None, processor=None):
    """A copy of the tiny folder with config.json edited (or replaced by `raw` bytes) and a
    preprocessor_config.json (a dict, or raw text)."""
    import shutil
    d = tmp_path / name
    shutil.copytree(base, d)
    if raw is not None:
        (d / "config.json").write_bytes(raw)
    elif config is not None:
        merged = {**json.loads((base / "config.json").read_text()), **config}
        (d / "config.json").write_text(json.dumps(merged))
    if processor is not None:
        (d / "preprocessor_config.json").write_text(
            processor if isinstance(processor, str) else json.dumps(processor))
    return d


def refused(tmp_path, source, *fragments, extra=()):
    """import SOURCE fails with one sentence and writes nothing."""
    out = tmp_path / "out" / "m.pt"
    before = snapshot(tmp_path / "out")
    result = cli("import", source, "-o", out, *extra, input="y\n")
    line = one_error_line(result, *fragments)
    assert not out.exists() and snapshot(tmp_path / "out") == before, result.output
    return line


# ----------------------------------------------------------------------------- item 1

def test_a_folder_that_asks_to_run_its_own_code_is_refused_without_a_prompt(hf_base, tmp_path):
    marker = tmp_path / "PWNED"
    payload = f"open({str(marker)!r}, 'w').write('ran')\n"
    for name, config in (("custom", {"model_type": "evilnet", "auto_map": {
            "AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}}),
                         ("vit-with-code", {"auto_map": {
                             "AutoModelForImageClassification": "evil.Model"}})):
        d = folder_with(hf_base, tmp_path, name, config)
        (d / "evil.py").write_text(payload)
        line = refused(tmp_path, f"hf:{d}", "asks to run Python code from the folder",
                       "never runs a model folder's code")
        assert "evil." in line and "run the custom code" not in line
    assert not marker.exists()


# ----------------------------------------------------------------------------- item 3

def test_a_folder_naming_a_hub_attention_imports_offline(hf_base, tmp_path, monkeypatch):
    """Nothing reaches the network: the attention is vitscope's choice, the hub offline."""
    key, value = "attn_implementation", "kernels-community/flash-attn"
    calls = []

    def no_network(self, address):
        calls.append(address)
        raise OSError("the network is off in this test")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    d = folder_with(hf_base, tmp_path, "attn", {key: value})
    random = folder_with(hf_base, tmp_path, "attn-random", {key: value})
    (random / "model.safetensors").unlink()      # random weights: the config builds the model
    for folder in (d, random):
        out = tmp_path / f"{folder.name}.pt"
        result = cli("import", f"hf:{folder}", "-o", out)
        assert result.exit_code == 0, result.output
        from vitscope.model.checkpoint import load_model
        model, ck = load_model(out)
        assert key not in ck.model_config.kwargs
        with torch.no_grad():
            assert torch.isfinite(model(torch.rand(1, 3, 32, 32))).all()
    assert calls == []


# ----------------------------------------------------------------------------- item 10

CONFIG_CASES = {
    "invalid-json": (dict(raw=b"{not json"), "is not valid JSON"),
    "a-list": (dict(raw=b"[1, 2]"), "holds a JSON list"),
    "deep": (dict(raw=b"[" * 100_000 + b"]" * 100_000), "nests 100,000 levels deep"),
    "not-utf8": (dict(raw=b'{"model_type": "vit\xff"}'), "is not UTF-8 text"),
    "hidden-1e9": (dict(config={"hidden_size": 10 ** 9}), "hidden_size 1,000,000,000, outside"),
    "hidden-negative": (dict(config={"hidden_size": -32}), "hidden_size -32, outside"),
    "hidden-text": (dict(config={"hidden_size": "32"}), "hidden_size '32', not a whole number"),
    "image-1e6": (dict(config={"image_size": 10 ** 6}), "image_size 1,000,000, outside"),
    "no-heads": (dict(config={"num_attention_heads": 0}), "num_attention_heads 0, outside"),
    "1e7-layers": (dict(config={"num_hidden_layers": 10 ** 7}), "num_hidden_layers 10,000,000"),
    "patch-64": (dict(config={"patch_size": 64}), "larger than its image_size"),
    "pre-invalid": (dict(processor="{nope"), "preprocessor_config.json"),
    "pre-list": (dict(processor="[1]"), "holds a JSON list"),
    "pre-crop-no-keys": (dict(processor={"do_center_crop": True, "crop_size": {}}), "crop_size"),
    "pre-size-0": (dict(processor={"size": {"height": 0, "width": 0}}), "size.height 0"),
    "pre-mean-text": (dict(processor={"image_mean": "0.5"}), "image_mean"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_hostile_folder_files_are_one_sentence(hf_base, tmp_path, case):
    kwargs, fragment = CONFIG_CASES[case]
    d = folder_with(hf_base, tmp_path, case, **kwargs)
    t0 = time.monotonic()
    refused(tmp_path, f"hf:{d}", fragment)
    assert time.monotonic() - t0 < 20      # 10^7 layers: refused before anything is built


def test_links_and_shards_leaving_the_folder_are_refused(hf_base, tmp_path):
    d = folder_with(hf_base, tmp_path, "link")
    (d / "config.json").unlink()
    os.symlink("/etc/passwd", d / "config.json")
    refused(tmp_path, f"hf:{d}", "is a link to '/etc/passwd', outside the model folder")
    for name, shard in (("sub-folder", "sub/model-00001-of-00001.safetensors"),
                        ("leaving", "../../elsewhere/model.safetensors")):
        d = folder_with(hf_base, tmp_path, name)
        state = safetensors_torch.load_file(d / "model.safetensors")
        (d / "model.safetensors").unlink()
        (d / "sub").mkdir()
        safetensors_torch.save_file(state, d / "sub" / "model-00001-of-00001.safetensors")
        (d / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": {k: shard for k in state}}))
        refused(tmp_path, f"hf:{d}", "names the shard", "not a file directly in the model folder")


def test_a_resample_name_is_read_as_pils_filter(hf_base, tmp_path):
    d = folder_with(hf_base, tmp_path, "named", processor={"resample": "bicubic",
                                                           "size": {"height": 32, "width": 32}})
    result = cli("import", f"hf:{d}", "-o", tmp_path / "named.pt")
    assert result.exit_code == 0, result.output
    from vitscope.model.checkpoint import load_checkpoint
    assert load_checkpoint(tmp_path / "named.pt").train_config["preprocess"]["interpolation"] \
        == "bicubic"


@pytest.mark.parametrize("args,fragment", [
    (("timm:resnet18",), "is not a VisionTransformer"),
    (("timm:vit_tiny_patch16_224", "--image-size", "8"), "no valid patch grid"),
    (("timm:vit_tiny_patch16_224", "--image-size", "100000"), "over vitscope's limit of 4,096"),
    (("torchvision:vit_b_16", "--image-size", "17"), "indivisible by patch size"),
])
def test_hostile_sources_and_sizes_are_one_sentence(tmp_path, args, fragment):
    refused(tmp_path, *args[:1], fragment, extra=args[1:])


def test_a_classes_file_that_is_not_utf8_is_one_sentence(tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_bytes(b"cat\xff\ndog\n")
    refused(tmp_path, "timm:vit_tiny_patch16_224", "is not UTF-8 text",
            extra=("--image-size", "32", "--classes", classes))


# ----------------------------------------------------------------------------- item 8

def _weights_set_to(base, tmp_path, name, value):
    d = folder_with(base, tmp_path, name)
    state = safetensors_torch.load_file(d / "model.safetensors")
    key = next(k for k, v in state.items() if k.endswith("weight") and v.ndim == 2)
    state[key] = torch.full_like(state[key], value)
    safetensors_torch.save_file(state, d / "model.safetensors", metadata={"format": "pt"})
    return d


def test_import_refuses_what_loading_would_refuse_before_writing(hf_base, tmp_path):
    size = {"size": {"height": 32, "width": 32}}
    cases = [
        (folder_with(hf_base, tmp_path, "std0", processor={**size, "image_std": [0, 0, 0]}),
         "image_std [0, 0, 0]"),
        (folder_with(hf_base, tmp_path, "mean-nan",
                     processor='{"size": {"height": 32, "width": 32}, '
                               '"image_mean": [NaN, 0.5, 0.5]}'), "image_mean"),
        (folder_with(hf_base, tmp_path, "mean-2", processor={**size, "image_mean": [0.5, 0.5]}),
         "image_mean"),
        (_weights_set_to(hf_base, tmp_path, "nan-weights", float("nan")), "non-finite weights"),
        (_weights_set_to(hf_base, tmp_path, "huge-weights", 3e38), "non-finite outputs"),
    ]
    for folder, fragment in cases:
        refused(tmp_path, f"hf:{folder}", fragment)


# ----------------------------------------------------------------------------- items 2 and 6

def test_a_link_at_a_predictable_temporary_name_is_never_written_through(hf_base, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "imp").mkdir()
    for planted in ("v.pt.tmp", ".v.pt.tmp", "v.pt.partial"):
        os.symlink(victim, tmp_path / "imp" / planted)
    result = cli("import", f"hf:{hf_base}", "-o", tmp_path / "imp" / "v.pt")
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "precious"
    out = tmp_path / "imp" / "v.pt"
    assert out.is_file() and not out.is_symlink()


def test_a_second_import_into_the_same_path_is_told_it_is_in_use(hf_base, tmp_path):
    out = tmp_path / "m.pt"
    with held_elsewhere(tmp_path / ".m.pt.lock"):      # as another running import holds it
        one_error_line(cli("import", f"hf:{hf_base}", "-o", out), "is in use by process")
    assert not out.exists()
    assert cli("import", f"hf:{hf_base}", "-o", out).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".m.pt")) == []


# ----------------------------------------------------------------------------- item 16

def _import_then_signal(tmp_path, sig):
    """`vitscope import` in a child process, signalled as soon as its partial file exists."""
    out = tmp_path / "k" / "s.pt"
    out.parent.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen([sys.executable, "-m", "vitscope", "import",
                              "timm:vit_small_patch16_224", "--image-size", "32", "-o", str(out)],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.monotonic() + 120
    while child.poll() is None and time.monotonic() < deadline:
        if any(p.name.endswith(".partial") for p in out.parent.iterdir()):
            child.send_signal(sig)
            break
        time.sleep(0.002)
    _, err = child.communicate(timeout=120)
    return child.returncode, err, out


def test_sigterm_during_import_leaves_nothing_and_a_killed_ones_leftovers_are_swept(tmp_path):
    code, err, out = _import_then_signal(tmp_path, signal.SIGTERM)
    assert code == 143, err                                  # 128 + SIGTERM, after cleaning up
    assert "Traceback" not in err
    assert sorted(p.name for p in out.parent.iterdir()) == []
    # what a SIGKILL leaves (made here: a real kill costs a second interpreter start): the
    # partial file and a temporary of a process that is gone
    from vitscope._internal.files import host_tag
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (out.parent / f"s.pt.{host_tag()}-{gone}-k3j2h1.partial").write_bytes(b"PK\x03\x04")
    (out.parent / f".s.pt.{host_tag()}-{gone}-k3j2h1.partial.x8y7.tmp-{host_tag()}-{gone}"
                  f".partial").write_bytes(b"PK")
    result = cli("import", "timm:vit_tiny_patch16_224", "--image-size", "32", "-o", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.parent.iterdir()) == ["s.pt"]        # swept
