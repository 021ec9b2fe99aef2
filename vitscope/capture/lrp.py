"""AttnLRP (Achtibat et al., ICML 2024) and CP-LRP (Ali et al., ICML 2022): layer-wise
relevance propagation through a ViT, as the authors' `lxt` package computes it in its
efficient (gradient × input) form, on every vitscope hooked model (vitscope's ViT and every
adapter) without patching any class.

LRP in gradient × input form: one forward and one backward pass of the target logit in which
the backward pass of some operations is replaced, while the forward values stay exactly the
model's (each replacement is `value.detach() + surrogate − surrogate.detach()`):

- LayerNorm (every `nn.LayerNorm`, subclasses included): the identity rule, by treating the
  standard deviation as a constant (lxt's `layer_norm_forward`);
- element-wise nonlinearities (GELU, QuickGELU, SiLU, ... modules): the identity rule, the
  gradient replaced by output / input (lxt's `identity_rule_implicit`);
- attention, `attnlrp`: the uniform rule on the two matmuls, the gradient reaching q and k
  divided by 4 and v by 2 (lxt's `patch_attention`), softmax's own gradient kept;
  `cp-lrp`: no relevance through the softmax: the attention weights are constants (lxt's
  `cp_multi_head_attention_forward`, the setting lxt ships for torchvision's ViT);
- linear layers and the patch convolution: plain gradient (the epsilon rule, ε → 0; lxt's
  zennit Gamma rules are not applied).

The relevance of a pixel is input × gradient; the map is that summed over channels and over
each patch's pixels (signed: positive is evidence for the target). The relevance that the
position embedding, the class token and the biases absorb is not in the map, as in lxt.
tests/capture/test_lrp.py compares both with lxt itself on the same models and inputs.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from vitscope.capture.patch_sum import patch_sum
from vitscope.errors import ConfigError
from vitscope.methods import MapMethod, register

# Element-wise nonlinearities whose backward pass becomes the identity rule. Matched by class
# name too: Hugging Face (GELUActivation, QuickGELUActivation, PytorchGELUTanh, ...) and
# open_clip (QuickGELU) define their own modules. ReLU's gradient already is output / input.
_ACTIVATIONS = (nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid, nn.ELU, nn.Softplus)
_ACTIVATION_NAMES = ("gelu", "silu", "swish", "mish")
EPS = 1e-10   # lxt's: keeps output / input finite where the input is exactly zero
# Images per forward and backward pass: the graph of the whole pass is held for the backward
# pass (about 85 MB an image for a ViT-S at 224 px), so a capture batch of 16-64 would add
# gigabytes to the capture's peak; the maps do not depend on it.
CHUNK = 2


def _is_activation(m: nn.Module) -> bool:
    if isinstance(m, _ACTIVATIONS):
        return True
    name = type(m).__name__.lower()
    return (any(k in name for k in _ACTIVATION_NAMES) and not list(m.parameters(recurse=False))
            and not list(m.children()))


def _swap_gradient(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """`value` in the forward pass, the gradient of `surrogate` in the backward pass."""
    return value.detach() + (surrogate - surrogate.detach()).to(value.dtype)


def _layer_norm_hook(module: nn.LayerNorm, args: tuple, output: torch.Tensor):
    x = args[0]
    xf = x.float()
    mean = xf.mean(dim=-1, keepdim=True)
    std = (((xf - mean) ** 2).mean(dim=-1, keepdim=True) + module.eps).sqrt()
    y = (xf - mean) / std.detach()
    if module.weight is not None:
        y = y * module.weight.float()
    if module.bias is not None:
        y = y + module.bias.float()
    return _swap_gradient(output, y)


def _activation_hook(module: nn.Module, args: tuple, output: torch.Tensor):
    x = args[0]
    if not isinstance(output, torch.Tensor) or output.shape != x.shape:
        return None
    ratio = (output / (x + EPS)).detach()
    return _swap_gradient(output, ratio * x)


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad / ctx.factor, None


def _divide(factor: float):
    return lambda t, name: _ScaleGradient.apply(t, factor)


@contextmanager
def lrp_rules(model: nn.Module, attention: str) -> Iterator[None]:
    """The model with LRP's backward rules (module docstring) for one forward/backward pass;
    every hook removed on exit, the model otherwise untouched. `attention`: "uniform"
    (AttnLRP) or "constant" (CP-LRP)."""
    from vitscope.model.hooks import attach
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    acts = [m for m in model.modules() if _is_activation(m)]
    if not acts:
        raise ConfigError(f"LRP's identity rule needs the MLP's nonlinearity as a module, and "
                          f"{type(model).__name__} has none (it calls it as a function); use "
                          f"gradient maps (grad-rollout, gradcam) or integrated-gradients.")
    if attention == "uniform":
        hooks = {"blocks.*.attn.q": _divide(4.0), "blocks.*.attn.k": _divide(4.0),
                 "blocks.*.attn.v": _divide(2.0)}
    elif attention == "constant":
        hooks = {"blocks.*.attn.weights": lambda t, name: t.detach()}
    else:
        raise ConfigError(f"LRP's attention rule is 'uniform' (AttnLRP) or 'constant' "
                          f"(CP-LRP), not {attention!r}.")
    handles = [m.register_forward_hook(_layer_norm_hook) for m in norms]
    handles += [m.register_forward_hook(_activation_hook) for m in acts]
    try:
        with ExitStack() as stack:
            stack.enter_context(attach(model, hooks))
            yield
    finally:
        for h in handles:
            h.remove()


def relevance(model, x: torch.Tensor, target: torch.Tensor, layout,
              options: Mapping[str, Any], attention: str) -> np.ndarray:
    """N×h×w LRP relevance of the target logit per patch (module docstring)."""
    maps = []
    with lrp_rules(model, attention), torch.enable_grad():
        for s in range(0, len(x), CHUNK):
            xs = x[s:s + CHUNK].detach().clone().requires_grad_(True)
            out = model(xs)
            picked = out.gather(1, target[s:s + CHUNK].to(out.device).long()[:, None]).sum()
            (grad,) = torch.autograd.grad(picked, xs)
            maps.append(patch_sum(xs.detach() * grad, layout))
    return np.concatenate(maps)


def attnlrp(model, x, target, layout, options) -> np.ndarray:
    return relevance(model, x, target, layout, options, "uniform")


def cp_lrp(model, x, target, layout, options) -> np.ndarray:
    return relevance(model, x, target, layout, options, "constant")


register(MapMethod("attnlrp", "AttnLRP (Achtibat et al. 2024): LRP's relevance of the target "
                   "logit per patch, identity rule on LayerNorm and the MLP nonlinearity, "
                   "uniform rule in attention (as lxt computes it)", {}, needs_model=True,
                   run=attnlrp, class_specific=True))
register(MapMethod("cp-lrp", "CP-LRP (Ali et al. 2022): LRP with the attention weights held "
                   "constant, identity rule on LayerNorm and the MLP nonlinearity (lxt's ViT "
                   "setting)", {}, needs_model=True, run=cp_lrp, class_specific=True))
