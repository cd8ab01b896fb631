"""TOML in and out of a :class:`Config`: reading a file, ``--set section.key=value`` overrides, relative paths."""

from __future__ import annotations

import copy
import dataclasses
import os
import tomllib
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from ..data.files import read_text
from ..errors import PyroVAEError, did_you_mean
from ..serialize import dump_toml
from .run import Config
from .schema import DataConfig, EvalConfig, ProgramSpec, TrainConfig, build
from .short import model_spec

__all__ = ["config_from_dict", "load_config", "apply_overrides", "dump_toml"]

#: the sections of a config file
SECTIONS = ("data", "model", "train", "evaluate")


def config_from_dict(values: Mapping[str, Any], base_dir: Optional[os.PathLike] = None, *,
                     program_dir_default: bool = True) -> Config:
    """Validate a nested mapping (as read from TOML) into a :class:`Config`.

    Relative data paths are resolved against ``base_dir`` (the TOML file's
    folder) so a config means the same thing from any working directory; so is
    a program's folder, which is ``base_dir`` itself when the config names none
    (unless ``program_dir_default`` is False: a run's config.toml, whose
    program was not found in a folder when it names none).
    """
    if not isinstance(values, Mapping):
        raise PyroVAEError(f"a config must be a table of sections, got {type(values).__name__}")
    cfg = _sections(values)
    return _resolve_paths(cfg, Path(base_dir) if base_dir is not None else None, program_dir_default)


def _resolve_paths(cfg: Config, base: Optional[Path], program_dir_default: bool = True) -> Config:
    updates = {}
    def resolve(value: str) -> str:
        p = Path(value).expanduser()
        if not p.is_absolute() and base is not None:
            p = base / p
        return str(p.absolute()) if base is not None else str(p)

    for key in ("path", "train", "test", "feature_names", "vocabulary"):
        value = getattr(cfg.data, key)
        if isinstance(value, Mapping):
            updates[key] = {name: resolve(v) for name, v in value.items()}
        elif value is not None:
            updates[key] = resolve(value)
    program = isinstance(cfg.model, ProgramSpec)
    if program and (cfg.model.program_dir is not None or (base is not None and program_dir_default)):
        # the program is imported from this folder (then the current directory), wherever the run is loaded from
        folder = Path(cfg.model.program_dir or ".").expanduser()
        if not folder.is_absolute() and base is not None:
            folder = base / folder
        cfg = cfg.replace(model=dataclasses.replace(cfg.model, program_dir=str(folder.absolute())))
    return cfg.replace(data=dataclasses.replace(cfg.data, **updates)) if updates else cfg


def load_config(path: os.PathLike, overrides: Tuple[str, ...] = (), *, run: bool = False) -> Config:
    """Read a TOML file (plus ``section.key=value`` overrides) into a :class:`Config`.

    ``run``: the file is a run folder's config.toml, which records the program's folder when it had one (so none
    means an installed program, not the run folder).
    """
    path = Path(path)
    # a missing, special (FIFO, device), unreadable or non-UTF-8 file: one line
    text = read_text(path, "config", "check the path")
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PyroVAEError(f"{path}: invalid TOML: {e}; fix the syntax at that line") from None
    said = values.get("data", {}).get("source") if isinstance(values.get("data"), Mapping) else None
    values = apply_overrides(values, overrides)
    data = values.get("data")
    if said == "digits" and isinstance(data, Mapping) and data.get("source") == "digits" and data.get("train"):
        # a data.train file with the default source means 'arrays'; a file that names digits outright contradicts it
        raise PyroVAEError(
            f"{path}: data.train is given but data.source = 'digits', which does not read it: "
            "remove data.source (a data.train file means source 'arrays') or remove data.train"
        )
    return config_from_dict(values, base_dir=path.parent, program_dir_default=not run)


def apply_overrides(values: Mapping[str, Any], overrides) -> Dict[str, Any]:
    """Apply ``section.key=value`` strings; values are TOML literals, bare words are strings."""
    out = copy.deepcopy(dict(values))
    for item in overrides:
        if "=" not in item:
            raise PyroVAEError(f"--set {item!r}: expected section.key=value, e.g. train.epochs=5")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) < 2 or not all(parts):
            raise PyroVAEError(f"--set {item!r}: expected section.key=value, e.g. train.epochs=5")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()  # a bare word: take it as a string
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise PyroVAEError(f"--set {item!r}: {p!r} is not a table")
            node = nxt
        node[parts[-1]] = value
    return out


def _sections(values: Mapping[str, Any]) -> Config:
    """The sections, each checked; an unknown section fails with "did you mean"."""
    for key in values:
        if key not in SECTIONS:
            raise PyroVAEError(f"unknown key {key!r}: {did_you_mean(key, SECTIONS)}valid keys in [top level]: "
                               f"{', '.join(SECTIONS)}")
    for key in SECTIONS:
        if key in values and not isinstance(values[key], Mapping):
            raise PyroVAEError(f"{key}: expected a table, got {values[key]!r}")
    kwargs = {}
    if "data" in values:
        kwargs["data"] = build(DataConfig, values["data"], "data")
    if "model" in values:
        kwargs["model"] = model_spec(values["model"], "model")
    if "train" in values:
        kwargs["train"] = build(TrainConfig, values["train"], "train")
    if "evaluate" in values:
        kwargs["evaluate"] = build(EvalConfig, values["evaluate"], "evaluate")
    return Config(**kwargs)


