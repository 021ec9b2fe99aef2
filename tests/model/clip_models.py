"""Small CLIP and SigLIP models with random weights, saved as a Hugging Face folder with a
tokenizer and an image processor the tests write themselves (nothing downloaded)."""
from __future__ import annotations

from pathlib import Path

import torch

VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
              image_size=32, patch_size=8)
TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            vocab_size=16, max_position_embeddings=16, pad_token_id=0, bos_token_id=2,
            eos_token_id=3)
WORDS = ["<pad>", "<unk>", "<s>", "</s>", "a", "photo", "of", "cat", "dog", "ship", "."]
KWARGS = {"CLIPModel": dict(vision_config=VISION, text_config=TEXT, projection_dim=24),
          "CLIPVisionModel": VISION,
          "SiglipModel": dict(vision_config=VISION, text_config=dict(TEXT, projection_size=32)),
          "SiglipVisionModel": VISION}


def perturbed(model):
    """Random init leaves weights at exact zeros or ones: nudge each so nothing degenerates."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def hf_model(name: str):
    """The transformers object itself (CLIPModel, SiglipModel, ...), small, random, seeded."""
    import transformers
    torch.manual_seed(0)
    kwargs = KWARGS[name]
    config = getattr(transformers, name.replace("Model", "Config"))(**kwargs)
    return perturbed(getattr(transformers, name)(config)).eval()


def tokenizer():
    """A word-level tokenizer over WORDS (a real tokenizer.json, as a hub folder has one)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>")


def save_folder(name: str, folder: Path):
    """save_pretrained of the model, its tokenizer and image processor into `folder`."""
    import transformers
    model = hf_model(name)
    model.save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    processor = transformers.SiglipImageProcessor(size={"height": 32, "width": 32}) \
        if name.startswith("Siglip") else \
        transformers.CLIPImageProcessor(size={"shortest_edge": 32},
                                        crop_size={"height": 32, "width": 32})
    processor.save_pretrained(folder)
    return model


def pet_folder(root: Path, per_class: int = 3) -> Path:
    """cat/ and dog/ sub-folders of `root`, `per_class` random 40×40 images each."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                root / c / f"{c}_{i}.png")
    return root


# open_clip: a tiny CLIP config (its text vocabulary is open_clip's BPE tokenizer's 49,408)
OPENCLIP_NAME = "vitscope-test-tiny-clip"
OPENCLIP_CONFIG = {"embed_dim": 24,
                   "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8,
                                  "head_width": 16},
                   "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32,
                                "heads": 2, "layers": 1}}


def register_openclip(folder: Path) -> str:
    """Add the tiny config to open_clip's registry (open_clip.add_model_config), as a user
    adds their own; returns its name."""
    import json

    import open_clip
    path = Path(folder) / f"{OPENCLIP_NAME}.json"
    path.write_text(json.dumps(OPENCLIP_CONFIG))
    open_clip.add_model_config(path)
    return OPENCLIP_NAME


def openclip_model():
    import open_clip
    torch.manual_seed(0)
    return perturbed(open_clip.model.CLIP(**OPENCLIP_CONFIG)).eval()
