"""The built-in vitscope plugins (installed as `vitscope.plugins`), one module each.

They register through the `vitscope.plugins` entry-point group in setup.cfg, exactly as a
third-party plugin does.
"""
