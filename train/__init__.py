"""The training engine (installed as `vitscope.train`)."""
