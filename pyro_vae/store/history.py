"""history.csv: one row per epoch (train loss, test ELBO, seconds, beta)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import List

from .files import write_text_atomic


HISTORY_FIELDS = ("epoch", "train_loss", "test_elbo", "seconds", "beta")



def write_history(history: List[dict], path: Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in HISTORY_FIELDS})
    write_text_atomic(path, buf.getvalue())

