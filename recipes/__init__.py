"""Runnable recipes built only from chainkit's public API: ``python -m recipes.<name>``."""
