"""hskcache: build, inspect and read offline caches of pruned teacher hidden-state knowledge."""

__version__ = "0.1.0"
