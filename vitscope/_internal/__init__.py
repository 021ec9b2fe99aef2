"""Plumbing the rest of vitscope shares and users never import: file writes that are atomic
and fail in one sentence, output folders, locks, signals, CPU threads, devices, bounded
parsing, short text for messages, and the old import paths."""
