"""Data: every `--data` spec becomes one in-memory `ImageDataset` of uint8 images.

    ds = load_dataset("shapes", "val", image_size=32)       # or cifar10, folder:PATH, files:...

- `specs`: parsing `--data` specs, loading them, model inputs and normalisation;
- `base`: the `ImageDataset` every loader returns and the seeded train/val carve-out;
- one module per kind of source: `shapes` (built in, offline), `cifar`, `folder`, and `images`
  (decoding one file of any format into the model's size).
"""
from vitscope.data.base import ImageDataset, carve_split, concat
from vitscope.data.images import Preprocess
from vitscope.data.specs import (DEFAULT_MEAN, DEFAULT_STD, SPLITS, VALID_SPECS, absolute_spec,
                                 dataset_stats, files_spec, is_imported, load_dataset,
                                 missing_data, normalization, parse_normalize, parse_spec,
                                 preprocessing, resize_dataset, resize_images, split_files,
                                 to_model_input, training_data_gone)

__all__ = ["ImageDataset", "Preprocess", "carve_split", "concat", "load_dataset", "parse_spec",
           "absolute_spec", "files_spec", "split_files", "resize_dataset", "resize_images",
           "is_imported", "preprocessing", "dataset_stats", "normalization", "parse_normalize",
           "to_model_input", "training_data_gone", "missing_data", "SPLITS", "DEFAULT_MEAN",
           "DEFAULT_STD", "VALID_SPECS"]
