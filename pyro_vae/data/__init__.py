"""Data: sources (digits, IDX images, arrays, synthetic), checks, and memory-mapped rows."""

from .sources import Dataset, load_data

__all__ = ["Dataset", "load_data"]
