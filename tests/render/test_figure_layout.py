"""Figure layout, checked on real renders: GIF headers wrap inside the frame with the
changing part first, LayerNorm histograms keep the outliers, summary.json is strict JSON
(null for NaN), and cls-embedding computes no silhouette without labels."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vitscope.render import mosaic as M
from vitscope.analyze.run import render_plugins
from vitscope.cli import main
from vitscope.dump import Dump
from vitscope.render.figures import save_results
from vitscope.analyze.registry import discover
from vitscope.plugins.norm_activations import full_range_bins

WHITE = 235   # a header pixel at least this bright in every channel is background


def strict_json(text: str):
    """json.loads that rejects NaN / Infinity, as browsers' JSON.parse does."""
    def reject(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=reject)


def gif_frames(path) -> list[np.ndarray]:
    with Image.open(path) as im:
        frames = []
        for i in range(im.n_frames):
            im.seek(i)
            frames.append(np.asarray(im.convert("RGB")))
    return frames


def assert_headers_fit(frames: list[np.ndarray], strip_height: int) -> None:
    """The header band (above the strip) has white side margins in every frame, so no text
    runs off the edge, and its first text line differs between frames (it names the
    block / layer the frame shows)."""
    band = frames[0].shape[0] - strip_height
    assert band > 0
    for frame in frames:
        margin = frame[:band, -(M.HEADER_MARGIN - 1):]
        assert (margin >= WHITE).all(), "header text reaches the right edge of the frame"
    first_line = [f[:M.HEADER_LEADING + 14, :].astype(int) for f in frames]
    assert np.abs(first_line[0] - first_line[1]).max() > 100, "the first line does not change"


def tile_side(dump_path) -> int:
    with Dump.open(dump_path) as dump:
        size = dump.layout.image_size[1]
    return M.tile_scale(size) * size


# ------------------------------------------------------------------------- GIF headers

@pytest.mark.parametrize("width", [40, 128, 261, 600])
def test_wrapped_header_lines_fit_the_width_in_the_drawing_font(width):
    header = ("block 12 · max 43.1 · CLS 22.2\n"
              "Most-attended patch (cyan) → patches, residual-stream norm per token")
    font = M.header_font(14)
    lines = M.wrap_header(header, font, width)
    assert all(font.getlength(line) <= width for line in lines if len(line) > 1), lines
    assert "".join(lines).replace(" ", "") == header.replace("\n", "").replace(" ", "")
    if width >= 128:   # narrower, even "12 ·" is broken between characters
        assert not any(line.startswith("·") for line in lines)
    if width >= 261:   # its own line break is kept: the changing part stays on line one
        assert lines[0] == "block 12 · max 43.1 · CLS 22.2"


def test_text_frames_share_one_size_and_keep_text_off_the_edges():
    strips = [np.zeros((50, 128, 3), np.uint8)] * 2
    headers = ["layer 1 · head 0\nCLS → patches", "layer 1 · head 0\n" + "wide words " * 8]
    frames = M.text_frames(strips, headers)
    assert frames[0].shape == frames[1].shape
    band = frames[0].shape[0] - 50
    assert band == (14 + M.HEADER_LEADING) * len(M.header_lines(headers[1], 128)) + 8
    for frame in frames:
        assert (frame[:band, :M.HEADER_MARGIN - 1] >= WHITE).all()
        assert (frame[:band, -(M.HEADER_MARGIN - 1):] >= WHITE).all()
        assert (frame[:band] < 100).any()                   # the text is there


def test_norm_activations_gif_header_fits_and_starts_with_the_block(small_dump, tmp_path):
    dump_path, _ = small_dump
    (res,) = render_plugins(dump_path, [discover().get("norm-activations")], tmp_path,
                            interactive=False)
    assert res.ok, res.error
    frames = gif_frames(tmp_path / "norm-activations" / "token_norms.gif")
    S = tile_side(dump_path)
    k = 4                                                   # the `show` default
    strip = M.Mosaic(np.zeros((k, 2, S, S, 3), np.uint8)).array
    assert frames[0].shape[1] == strip.shape[1]
    assert_headers_fit(frames, strip.shape[0])


def test_token_attention_gif_header_fits_one_narrow_image(small_dump, tmp_path):
    dump_path, _ = small_dump
    values = {"token-attention": {"show": 1, "query": "top"}}
    (res,) = render_plugins(dump_path, [discover().get("token-attention")], tmp_path, values,
                            interactive=False)
    assert res.ok, res.error
    frames = gif_frames(res.out_dir / "token_attention.gif")
    from vitscope.plugins.token_attention import GIF_TILE_PX
    with Dump.open(dump_path) as dump:
        size = dump.layout.image_size[1]
    S = M.tile_scale(size, GIF_TILE_PX) * size
    assert frames[0].shape[1] == S >= 160                   # one tile wide, and a large one
    lines = M.header_lines("layer 0 · head 0\nMost-attended patch (cyan) → patches", S)
    assert len(lines) >= 3 and lines[0] == "layer 0 · head 0"
    legend = M.colourbar_strip(S, "attention, each tile ÷ its own maximum", high="max")
    assert_headers_fit(frames, S + legend.shape[0])
    # under the tiles, the colour bar: the colour map's ramp from dark to bright, every frame
    bar = [f[-legend.shape[0]:] for f in frames]
    assert all(np.abs(b.astype(int) - bar[0]).mean() < 8 for b in bar)   # up to dithering
    row = bar[0][14].astype(int)                            # a row through the bar
    assert row.sum(axis=1).max() - row.sum(axis=1).min() > 400


def test_gif_keeps_a_colour_ramp_smooth_beside_busy_pixels(tmp_path):
    """One palette for all frames and error diffusion: every 8×8 block of a colour map's ramp
    keeps its colour on average (a palette of 255 colours per frame without dithering broke
    the ramp into bands wherever busy photo pixels took the colours)."""
    from vitscope.render.figures import colorize, save_gif
    rng = np.random.default_rng(0)
    ramp = colorize(np.tile(np.linspace(0, 1, 512, dtype=np.float32), (40, 1)), "inferno")
    frames = [np.concatenate([ramp, rng.integers(0, 256, (40, 512, 3), dtype=np.uint8)])
              for _ in range(6)]
    blocks = lambda a: a[:40].astype(float).reshape(5, 8, 64, 8, 3).mean((1, 3))  # noqa: E731
    for frame in gif_frames(save_gif(frames, tmp_path / "ramp.gif")):
        assert np.abs(blocks(frame) - blocks(ramp)).max() < 2.0


# ----------------------------------------------------------------------------- histograms

def test_histogram_bins_span_every_value_including_outliers():
    rng = np.random.default_rng(0)
    pre = np.concatenate([rng.normal(size=20000), [-80.0, 150.0]]).astype(np.float16)
    post = rng.normal(size=20000).astype(np.float16)
    bins = full_range_bins(pre, post)
    assert bins[0] == -80.0 and bins[-1] == 150.0
    counts, _ = np.histogram(pre, bins)
    assert counts.sum() == pre.size and counts[0] >= 1 and counts[-1] >= 1
    flat = full_range_bins(np.ones(5), np.ones(3))          # constant values: still valid bins
    assert np.all(np.diff(flat) > 0) and np.histogram(np.ones(5), flat)[0].sum() == 5


# ------------------------------------------------------------------ summary.json, silhouette

def test_summary_json_writes_non_finite_numbers_as_null(tmp_path):
    summary = {"score": float("nan"), "inf": np.float32("inf"), "ok": np.float64(0.25),
               "nested": {"per_layer": [1.0, np.nan, -np.inf]}, "array": np.array([np.nan, 2])}
    save_results(tmp_path, {"x": np.zeros(2)}, summary)
    saved = strict_json((tmp_path / "summary.json").read_text())
    assert saved == {"score": None, "inf": None, "ok": 0.25,
                     "nested": {"per_layer": [1.0, None, None]}, "array": [None, 2.0]}


def test_unlabeled_data_gets_no_silhouette(small_dump, tmp_path, monkeypatch):
    dump_path, ckpt = small_dump
    flat = tmp_path / "unlabeled"                           # a flat folder: labels are -1
    flat.mkdir()
    with Dump.open(dump_path) as dump:
        for i, image in enumerate(dump.images[:8]):
            Image.fromarray(np.asarray(image)).save(flat / f"img{i}.png")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VITSCOPE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["analyze", str(ckpt), "--data", f"folder:{flat}",
                                    "--plugin", "cls-embedding", "--opt",
                                    "cls-embedding.umap=false", "-o", str(out)])
    assert res.exit_code == 0, res.output
    summary = strict_json((out / "cls-embedding@umap=false" / "summary.json").read_text())
    assert summary["coloured_by"] == "prediction"
    assert summary["silhouette_head"] is None and summary["silhouette_best"] is None
    assert summary["silhouette_first_block"] is None
    assert summary["silhouette"] == "no labels: silhouette not computed"
    assert np.isnan(np.load(out / "cls-embedding@umap=false" / "results.npz")["silhouette"]).all()
    assert (out / "cls-embedding@umap=false" / "silhouette.png").is_file()
    assert "no labels: silhouette not computed" in (out / "index.html").read_text()


def test_labelled_silhouette_is_scored_against_the_labels(small_dump, tmp_path):
    from sklearn.metrics import silhouette_score
    dump_path, _ = small_dump
    (res,) = render_plugins(dump_path, [discover().get("cls-embedding")], tmp_path,
                            {"cls-embedding": {"umap": False}}, interactive=False)
    assert res.ok, res.error
    summary = strict_json((res.out_dir / "summary.json").read_text())
    with Dump.open(dump_path) as dump:
        head = np.asarray(dump["cls"][:], np.float32)
        labels = dump.labels
    assert summary["coloured_by"] == "label" and "silhouette" not in summary
    assert summary["silhouette_head"] == pytest.approx(silhouette_score(head, labels), abs=1e-4)
