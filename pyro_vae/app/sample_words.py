"""A sampled document's words: each sample's most frequent words, written beside the samples and a few printed.

A topic model's samples are rows of word counts, which read as nothing as an
array.  When the run's columns are words (its ``data.vocabulary``, a synthetic
corpus's words, any multinomial run's named columns: data/names.py's
``words_of``), ``pyro-vae sample`` also writes ``<samples>.words.txt``: one
line per sample, its most frequent words with their counts (expected counts
for the default means, drawn counts with ``--draws``), most first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from ..data.names import top_names, words_of
from ..data.sources import column_names
from ..models.build import describe
from ..store.files import write_text_atomic

#: the words a sample's line lists
WORDS_PER_SAMPLE = 10
#: the samples' lines printed after the file is written
PREVIEW = 3


@dataclass(frozen=True)
class SampleWords:
    """The words file written: where, and its first lines."""

    path: Path
    preview: Tuple[str, ...]


def run_vocabulary(run) -> Optional[Tuple[str, ...]]:
    """The run's columns' names where they are words, else None (a run without a config, or of other data)."""
    if run.config is None or run.data_dim is None:
        return None
    names = column_names(run.config.data, run.data_dim, run.image_shape)
    return words_of(names, describe(run.config.model)["likelihood"], run.config.data)


def words_path(samples: Path) -> Path:
    """Where the words of the samples in ``samples`` go: beside it, ``samples-seed0.words.txt``."""
    return samples.with_suffix(".words.txt")


def write_sample_words(samples: np.ndarray, words: Sequence[str], path: Path, draws: bool) -> SampleWords:
    """Each row of ``samples`` as its most frequent words into ``path``, atomically."""
    what = "drawn counts" if draws else "expected counts (the mean of p(x | latents))"
    lines = [f"{j}\t" + " ".join(f"{w} ({c:.3g})" for w, c in row)
             for j, row in enumerate(top_names(samples.reshape(samples.shape[0], -1), words, WORDS_PER_SAMPLE))]
    header = f"# each sample's {WORDS_PER_SAMPLE} most frequent words, most first, with their {what}\n"
    write_text_atomic(path, header + "sample\twords\n" + "".join(line + "\n" for line in lines))
    return SampleWords(path, tuple(lines[:PREVIEW]))
