"""A whole run's config: its data, model, train and evaluate sections, and their plain (TOML-ready) form."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict

from ..serialize import dump_toml, to_plain
from .schema import DataConfig, EvalConfig, ModelSpec, OneLatent, TrainConfig, unread_data_keys
from .short import desugar, spec_to_dict


@dataclass(frozen=True)
class Config:
    """A whole run: its data, its model (a graph, or a program of your own), its training and its final evaluation."""

    data: DataConfig = DataConfig()
    model: ModelSpec = field(default_factory=lambda: desugar(OneLatent()))
    train: TrainConfig = TrainConfig()
    evaluate: EvalConfig = EvalConfig()

    def replace(self, **sections) -> "Config":
        """A copy with the given sections (``data=``, ``model=``, ``train=``) replaced."""
        return dataclasses.replace(self, **sections)

    def to_dict(self) -> Dict[str, Any]:
        """The config as plain values, section by section (what ``config.toml`` holds)."""
        # a source's data section records only the keys it reads (a file run no synthetic sizes)
        data = {k: v for k, v in to_plain(self.data).items() if k not in unread_data_keys(self.data.source)}
        return {"data": data, "model": spec_to_dict(self.model), "train": to_plain(self.train),
                "evaluate": to_plain(self.evaluate)}

    def to_toml(self) -> str:
        """The config as TOML text, every default filled in (a run folder's ``config.toml``)."""
        return dump_toml(self.to_dict())
