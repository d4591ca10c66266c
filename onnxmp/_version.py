"""The package version (one place; the record and the cache key name it)."""

__version__ = "0.1.0"
