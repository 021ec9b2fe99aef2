"""The notebook API: everything vitscope computes, from a model object in memory.

    import vitscope
    ex = vitscope.explain(model, ["cat.jpg", "dog.jpg"], methods=["grad-rollout", "gradcam"])
    ex.maps["grad-rollout"]      # N×h×w; ex.layout, ex.targets, ex.probs
    ev = ex.score()              # faithfulness, randomisation, localisation, with CIs
    ex.save("outputs/cats")      # the files and index.html of `vitscope analyze`
    att = vitscope.attention(model, images)      # per-layer, per-head attention and views
    emb = vitscope.embed(model, images)          # CLS embeddings and the PCA/UMAP view
    vitscope.view(model, images, "norm-activations")   # any plugin's figures, inline
    res = vitscope.patch(model, clean, corrupted, hooks="blocks.*.out", token=0)  # patching

- `models`: a vitscope ViT, a checkpoint path, or a timm / torchvision / Hugging Face object,
  wrapped in place while it runs and handed back unchanged;
- `images`: PIL images, files, folders, --data specs, arrays and tensors as model inputs;
- `capture`: maps from an in-memory capture of only the hook points the methods read;
- `explaining`: `explain()`, its methods and targets; `options`: their options, checked as
  `--opt` checks them;
- `results`: `Explanation` and `Evidence` (score), with inline display and files;
- `views`: `attention()`, `embed()`, `view()` and the plugins' figures, inline;
- `patching`: `patch()`, activation patching per hook point with intervals and a baseline;
- `display`: figures, PNG bytes and escaped, self-contained HTML for notebooks.
"""
from vitscope.capture import model_maps  # noqa: F401  (registers integrated-gradients, occlusion)
from vitscope.api.explaining import explain
from vitscope.api.patching import Patching, patch
from vitscope.api.results import Evidence, Explanation
from vitscope.api.views import Attention, Embedding, Figures, attention, embed, view

__all__ = ["explain", "attention", "embed", "view", "patch", "Explanation", "Evidence",
           "Attention", "Embedding", "Figures", "Patching"]
