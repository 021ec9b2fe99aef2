"""Classifiers measured on data: `vitscope eval` and `predict` (`classify`), and `vitscope
compare` (`compare` computes paired bootstrap intervals, `compare_page` draws them)."""
