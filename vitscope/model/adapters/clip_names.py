"""The Hugging Face image–text classes vitscope adapts (vitscope.model.adapters.clip), by class
and by config.json `model_type`: in a module of their own, with no imports, so the hub code can
choose an adapter from a config without importing the adapters (which import the hub)."""

CLASSES = ("CLIPModel", "CLIPVisionModel", "SiglipModel", "SiglipVisionModel")
MODEL_TYPES = {"clip": "CLIPModel", "clip_vision_model": "CLIPVisionModel",
               "siglip": "SiglipModel", "siglip_vision_model": "SiglipVisionModel"}
