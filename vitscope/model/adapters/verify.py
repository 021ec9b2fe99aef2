"""What `vitscope import` checks before it writes anything: whatever loading the checkpoint
would refuse, and a model whose outputs are not numbers.

    verify(imported, source="hf:./my-vit")     # ConfigError, one sentence, or nothing

A checkpoint that every other command then refuses ("was edited or is damaged") is worse than
no checkpoint: the import looked fine. So the token layout, the normalisation (a std of 0, a
NaN or a 2-element mean), the weights (NaN or infinite) and one forward pass of a fixed
test image (finite weights such as 3e38 overflow float32 arithmetic: "nan%" predictions) are
checked here, with the import's own words.
"""
from __future__ import annotations

import torch

from vitscope.errors import ConfigError

PROBE_TOKENS = 4096     # a probe forward above this many tokens costs seconds: skipped


def verify(imported, source: str) -> None:
    """ConfigError naming what is wrong with the model `imported` from `source`."""
    from vitscope.data import parse_normalize
    model = imported.model
    try:
        layout = model.token_layout
    except ValueError as e:
        raise ConfigError(f"{source} at input {model.input_shape[1]}×{model.input_shape[2]} "
                          f"has no valid patch grid ({e}); choose an --image-size of at least "
                          f"one patch.") from None
    if min(layout.grid) < 1:
        raise ConfigError(f"{source} at input {model.input_shape[1]}×{model.input_shape[2]} "
                          f"has no patches (its patches are larger than the image); choose a "
                          f"larger --image-size.")
    try:
        parse_normalize({"mean": imported.mean, "std": imported.std})
    except ValueError as e:
        raise ConfigError(f"{source} normalises its inputs with mean {imported.mean} and std "
                          f"{imported.std}: {e}, so every input would be meaningless; fix its "
                          f"preprocessing settings.") from None
    bad = [k for k, v in model.state_dict().items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ConfigError(f"{source} has non-finite weights (NaN or infinite values in "
                          f"{', '.join(bad[:3])}{more}), so every output would be meaningless; "
                          f"use an undamaged weights file.")
    if layout.num_tokens <= PROBE_TOKENS:
        _probe(model, source)


def _probe(model, source: str) -> None:
    """One forward pass of a fixed, normalised-range test image: its outputs must be finite."""
    c, h, w = model.input_shape
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, c, h, w, generator=g) * 2 - 1
    with torch.inference_mode():
        out = model.float().eval()(x)
    if not bool(torch.isfinite(out).all()):
        top = max(((k, float(v.abs().max())) for k, v in model.state_dict().items()
                   if v.is_floating_point() and v.numel()), key=lambda kv: kv[1],
                  default=("?", float("nan")))
        raise ConfigError(f"{source} gives non-finite outputs (NaN or infinite) on a test "
                          f"image: its weights overflow float32 arithmetic (largest magnitude "
                          f"{top[1]:.3g} in {top[0]}), so every prediction and figure would be "
                          f"meaningless; use an undamaged weights file.")
