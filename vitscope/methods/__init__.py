"""Each map method's arithmetic, as torch-free functions over numpy arrays: one implementation,
called by the plugins on dump chunks and by the Python API on in-memory captures, so both give
the same numbers.

- `rollout`: attention rollout (Abnar & Zuidema 2020): head fusion, discarding, the product;
- `grad_rollout`: gradient-weighted attention (Chefer et al. 2021): grad-rollout, attn-grad;
- `gradcam`: Grad-CAM on the patch tokens of one block;
- `attention`: the attention itself, the CLS row and column, one query's row;
- `registry`: each map method by name (`get("gradcam")`): the hook points it reads and its
  arithmetic over them, what the plugins and the API both call (`METHODS`, `register`).
"""
from vitscope.methods.attention import cls_maps, query_row
from vitscope.methods.grad_rollout import attention_gradient, grad_rollout
from vitscope.methods.gradcam import gradcam
from vitscope.methods.registry import METHODS, LazyArrays, MapMethod, MapOutput, get, register
from vitscope.methods.rollout import (FUSIONS, attention_rollout, discard_lowest, fuse_heads,
                                      pooled_query, rollout_step)

__all__ = ["attention_rollout", "rollout_step", "fuse_heads", "discard_lowest", "FUSIONS", "pooled_query",
           "grad_rollout", "attention_gradient", "gradcam", "cls_maps", "query_row",
           "METHODS", "MapMethod", "MapOutput", "LazyArrays", "get", "register"]
