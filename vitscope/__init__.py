"""vitscope: train Vision Transformers, capture their activations, and look inside them."""

__version__ = "0.1.0"


def _configure_threads() -> None:
    """CPU threads that do not spin against other processes (vitscope._internal.threads), set before
    torch loads whenever vitscope is imported first; a bad VITSCOPE_THREADS is reported by
    the CLI, and leaves the defaults alone in library use."""
    from vitscope._internal import threads
    try:
        threads.configure()
    except ValueError:
        pass


_configure_threads()
