"""CLI commands, one module per area; `vitscope.cli` imports each only when it runs."""
