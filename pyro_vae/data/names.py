"""Column names of a data matrix (genes, words, pixels): the one reader of ``data.feature_names`` and ``data.vocabulary`` files, and the names a source gives its own.

A count matrix's columns have names: a single-cell matrix's genes, a corpus's
words.  Users know two keys for the file that holds them, ``data.feature_names``
(a 10x ``genes.tsv`` / ``features.tsv``) and ``data.vocabulary`` (a topic
model's word list); both are read here, alike, into the Dataset's one
``feature_names``.  The file is one name a line, line i naming column i; a
tab-separated line (10x) gives its second field, the gene's name.  Names are
data: checked (as many as columns, none empty, repeated, over-long or holding a
control character, the line named in the error) and escaped wherever shown.

A source that makes its data names the columns itself, so that every per-feature
output (``evaluate --per-feature``, a sampled document's words) reads by name:
synthetic counts' genes (``gene_0000``, column 0 first), an image's pixels
(``r3c5``: row 3, column 5); a synthetic corpus names its words
(data/corpus.py).  Where the names are words (:func:`words_of`), a row of
counts reads as a document's most frequent words (:func:`top_names`).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import PyroVAEError
from .files import read_text

#: the longest name a column may have (longer is not a list of names)
MAX_NAME = 200

#: the config keys that name a file of column names, in the order they are looked up
NAME_KEYS = ("feature_names", "vocabulary")


def names_key(data_cfg) -> Optional[Tuple[str, str]]:
    """(``data.KEY``, path) of the file naming the data's columns, or None; the config refuses both keys at once."""
    for key in NAME_KEYS:
        path = getattr(data_cfg, key, None)
        if path is not None:
            return f"data.{key}", path
    return None


def read_column_names(path: str, columns: int, what: str = "data.feature_names",
                      rows: Optional[int] = None) -> Tuple[str, ...]:
    """The names of ``columns`` columns from a text file, one a line (a 10x line: its second field), checked;
    ``rows``: the data file's rows, named in the hint when the names match them instead (a features x cells file)."""
    text = read_text(path, what, "give a text file of one name per line")
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()  # a file's trailing newline (or blank lines) names no column
    noun = "words" if what.endswith("vocabulary") else "names"
    names = []
    seen: dict = {}
    for i, line in enumerate(lines, start=1):
        fields = line.split("\t")
        name = (fields[1] if len(fields) >= 2 else line).strip()
        if not name:
            raise PyroVAEError(f"{what} file {path!r}: line {i} is empty: give one name per line, line i naming "
                               "column i of the data")
        if len(name) > MAX_NAME:
            raise PyroVAEError(f"{what} file {path!r}: line {i} is {len(name)} characters long (at most {MAX_NAME}): "
                               "give one name per line")
        bad = next((c for c in name if not c.isprintable()), None)
        if bad is not None:
            raise PyroVAEError(f"{what} file {path!r}: line {i} holds the control character {bad!r}: give one "
                               "printable name per line")
        if name in seen:
            hint = " (a 10x file's first column, the gene IDs, is unique)" if len(fields) >= 2 else ""
            raise PyroVAEError(f"{what} file {path!r}: line {i} repeats {name!r} (line {seen[name]}): each column "
                               f"needs its own name{hint}; make them unique, e.g. {name + '-1'!r}")
        seen[name] = i
        names.append(name)
    if len(names) != columns and rows == len(names):
        raise PyroVAEError(f"{what} file {path!r} has {len(names)} {noun} but the data has {columns} columns; its "
                           f"{rows} rows match the {len(names)} {noun}: the file looks features x cells (as 10x writes "
                           "matrix.mtx): set data.transpose = true")
    if len(names) != columns:
        raise PyroVAEError(f"{what} file {path!r} has {len(names)} {noun} but the data has {columns} columns: give "
                           "one name a line, in column order")
    return tuple(names)


def names_text(names: Optional[Tuple[str, ...]]) -> str:
    """Column names as a file's text, one a line (what :func:`read_column_names` reads back)."""
    return "".join(n + "\n" for n in names or ())


def gene_names(columns: int) -> Tuple[str, ...]:
    """A synthetic count matrix's genes, named by their column: ``gene_0000``, ``gene_0001``, ..."""
    width = max(4, len(str(columns - 1)))
    return tuple(f"gene_{j:0{width}d}" for j in range(columns))


def pixel_names(shape: Tuple[int, int]) -> Tuple[str, ...]:
    """An image's pixels in row-major order, named by their place: ``r0c0``, ``r0c1``, ..."""
    rows, cols = shape
    return tuple(f"r{r}c{c}" for r in range(rows) for c in range(cols))


#: the likelihoods whose rows are documents: their columns' names are words
WORD_LIKELIHOODS = ("multinomial",)


def words_of(names: Optional[Sequence[str]], likelihood: Optional[str], data_cfg=None) -> Optional[Tuple[str, ...]]:
    """The columns' ``names`` read as words, or None: a run's whose config names a ``data.vocabulary``, or whose
    observed ``likelihood`` is a multinomial (its rows documents), when its columns have names."""
    if names is None:
        return None
    if likelihood in WORD_LIKELIHOODS or getattr(data_cfg, "vocabulary", None) is not None:
        return tuple(names)
    return None


def top_names(rows, names: Sequence[str], k: int) -> List[List[Tuple[str, float]]]:
    """Per row of counts (or expected counts), its ``k`` largest columns as (name, value), largest first; columns
    at 0 are left out, so a short document lists fewer."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != len(names):
        raise ValueError(f"rows of shape {rows.shape} against {len(names)} names")
    order = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    return [[(names[j], float(row[j])) for j in idx if row[j] > 0] for row, idx in zip(rows, order)]
