"""Loaders behind `vitscope.data.load_dataset`, one module per kind of `--data` spec.

Import `vitscope.data` (the public facade), not these modules.
"""
