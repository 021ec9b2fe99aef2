"""vitscope: train Vision Transformers, capture their activations, and look inside them."""

__version__ = "0.1.0"
