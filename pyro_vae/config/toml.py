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
from ..data.sources import SOURCES
from .schema import (DataConfig, EvalConfig, NodeConfig, OneLatent, ProgramSpec, TrainConfig, build, unread_count_key,
                     unread_count_keys, unread_data_key, unread_data_keys)
from .short import model_spec

__all__ = ["config_from_dict", "load_config", "apply_overrides", "dump_toml"]

#: the sections of a config file
SECTIONS = ("data", "model", "train", "evaluate")


def config_from_dict(values: Mapping[str, Any], base_dir: Optional[os.PathLike] = None, *,
                     program_dir_default: bool = True, recorded: bool = False) -> Config:
    """Validate a nested mapping (as read from TOML) into a :class:`Config`.

    Relative data paths are resolved against ``base_dir`` (the TOML file's
    folder) so a config means the same thing from any working directory; so is
    a program's folder, which is ``base_dir`` itself when the config names none
    (unless ``program_dir_default`` is False: a run's config.toml, whose
    program was not found in a folder when it names none).

    A key written where it does not apply is refused, even at its default value (a user who writes it expects it to
    act).  ``recorded``: the values a run recorded (its config.toml, its checkpoint's copy), where older versions
    wrote every default: keys its source does not read are dropped instead, so that old runs stay loadable.
    """
    if not isinstance(values, Mapping):
        raise PyroVAEError(f"a config must be a table of sections, got {type(values).__name__}")
    cfg = _sections(_applicable(values) if recorded else values)
    if not recorded:  # after the schema, which names a bad value or an unknown key first
        _check_applicable(values)
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
    # a run's record (its config.toml, or a copy of one) drops the keys that do not apply; a --set one is refused
    recorded = run or _written_by_pyro_vae(values)
    if recorded and overrides:
        _check_applicable(apply_overrides(values, overrides), only={o.split("=", 1)[0].strip() for o in overrides})
    values = apply_overrides(values, overrides)
    data = values.get("data")
    if said == "digits" and isinstance(data, Mapping) and data.get("source") == "digits" and data.get("train"):
        # a data.train file with the default source means 'arrays'; a file that names digits outright contradicts it
        raise PyroVAEError(
            f"{path}: data.train is given but data.source = 'digits', which does not read it: "
            "remove data.source (a data.train file means source 'arrays') or remove data.train"
        )
    return config_from_dict(values, base_dir=path.parent, program_dir_default=not run, recorded=recorded)


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


def _data_source(data: Mapping[str, Any]) -> str:
    """The source a raw data section means (a data.train file with the default source means 'arrays')."""
    source = data.get("source", DataConfig.source)
    return "arrays" if data.get("train") is not None and source == DataConfig.source else source


def _applicable(values: Mapping[str, Any]) -> Mapping[str, Any]:
    """A recorded config less the synthetic data keys its source does not read (older runs recorded them all)."""
    data = values.get("data")
    if not isinstance(data, Mapping):
        return values
    unread = unread_data_keys(_data_source(data))
    return dict(values, data={k: v for k, v in data.items() if k not in unread})


#: data keys pyro-vae writes into every run's config.toml, which a hand-written file hardly spells out all together
_RECORD_KEYS = ("arrays", "binarize", "drop_nonfinite", "split_seed", "label_fraction", "test_fraction")


def _written_by_pyro_vae(values: Mapping[str, Any]) -> bool:
    """Whether ``values`` look like a run's config.toml (every default written), e.g. one copied to retrain."""
    data = values.get("data")
    return isinstance(data, Mapping) and all(k in data for k in _RECORD_KEYS)


def _check_applicable(values: Mapping[str, Any], only: Optional[set] = None) -> Mapping[str, Any]:
    """One line for a key written where it does not apply, whatever its value: a synthetic data key with a source
    that does not read it, a count key its observed node's likelihood does not read.  ``only``: the key paths
    checked (a --set on a run's record); None: all."""
    def written(section: Mapping[str, Any], key: str, path: str) -> bool:
        return key in section and (only is None or path in only)

    data = values.get("data")
    source = _data_source(data) if isinstance(data, Mapping) else None
    if isinstance(source, str) and source in SOURCES:  # an unknown source is named by the schema, "did you mean"
        for key in unread_data_keys(source):
            if written(data, key, f"data.{key}"):
                raise unread_data_key(source, key)
    model = values.get("model")
    if not isinstance(model, Mapping) or "program" in model:
        return values
    nodes = model.get("nodes")
    if nodes is None:  # the one-latent form: its observed node's keys are the section's
        _check_count_keys(model, "model", OneLatent, written)
    elif isinstance(nodes, Mapping):
        for name, node in nodes.items():
            if isinstance(node, Mapping) and node.get("role") == "observed":
                _check_count_keys(node, f"model.nodes.{name}", NodeConfig, written)
    return values


def _check_count_keys(node: Mapping[str, Any], prefix: str, cls, written) -> None:
    likelihood, dispersion = node.get("likelihood", cls.likelihood), node.get("dispersion", cls.dispersion)
    if not isinstance(likelihood, str) or not isinstance(dispersion, str):
        return  # a value of the wrong type: the schema names it
    for key in unread_count_keys(likelihood, dispersion):
        if written(node, key, f"{prefix}.{key}"):
            raise unread_count_key(f"{prefix}.{key}", key, likelihood, dispersion)


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


