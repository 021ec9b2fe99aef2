"""`vitscope --version/--help/info/hooks` through CliRunner and the installed script."""
from __future__ import annotations

import shutil
import subprocess
import sys

from click.testing import CliRunner

from vitscope import __version__
from vitscope.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_version_and_help():
    assert __version__ in run("--version").output
    out = run("--help").output
    assert "info" in out and "hooks" in out
    assert "...\n" not in out.split("Commands:")[1]   # each command's whole first sentence
    assert "writes runs/<name>/{best,last}.pt, metrics, curves." in " ".join(out.split())


def test_info(tiny_ckpt):
    res = run("info", tiny_ckpt)
    assert res.exit_code == 0, res.output
    assert "embed_dim" in res.output and "val_acc" in res.output and "a, b, c, d, e" in res.output
    assert "parameters" in res.output


def test_hooks_lists_every_point_with_shape(tiny_ckpt):
    res = run("hooks", tiny_ckpt)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert len(lines) == 2 + 2 * (13 + 2) + 3          # + each attention's CLS row and column
    assert any(l.split() == ["blocks.1.attn.weights", "B×4×17×17"] for l in lines)
    assert any(l.split() == ["blocks.1.attn.weights.cls_col", "B×4×17"] for l in lines)
    res = run("hooks", tiny_ckpt, "--match", "blocks.1.attn.weights")
    assert res.output.split() == ["blocks.1.attn.weights", "B×4×17×17"]


def test_bad_checkpoint_is_one_error_line(tmp_path):
    res = run("info", tmp_path / "missing.pt")
    assert res.exit_code == 1
    assert res.output.startswith("Error: No checkpoint at") and "Traceback" not in res.output


def test_installed_console_script(tiny_ckpt):
    exe = shutil.which("vitscope") or str(__import__("pathlib").Path(sys.executable).with_name("vitscope"))
    out = subprocess.run([exe, "hooks", str(tiny_ckpt)], capture_output=True, text=True, check=True)
    assert "blocks.0.attn.weights" in out.stdout
    out = subprocess.run([sys.executable, "-m", "vitscope", "--version"], capture_output=True,
                         text=True, check=True)
    assert __version__ in out.stdout


def test_errors_under_torchrun_name_the_rank(tmp_path):
    missing = tmp_path / "nope.pt"
    res = CliRunner().invoke(main, ["info", str(missing)], env={"WORLD_SIZE": "2", "RANK": "1"})
    assert res.exit_code == 1 and res.output.startswith("Error: (rank 1) No checkpoint at")
    res = CliRunner().invoke(main, ["info", str(missing)], env={"WORLD_SIZE": "2", "RANK": "0"})
    assert res.output.startswith("Error: No checkpoint at")
