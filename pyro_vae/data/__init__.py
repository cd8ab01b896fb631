"""Data: sources (digits, IDX images, arrays, synthetic, sequences), checks, and memory-mapped rows."""

from .arrays import Dataset
from .sources import load_data

__all__ = ["Dataset", "load_data"]
