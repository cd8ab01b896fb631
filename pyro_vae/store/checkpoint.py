"""Atomic checkpoints that hold everything needed to resume bit-exactly.

A checkpoint is a plain dict of tensors, numbers and strings, so it loads
with ``torch.load(weights_only=True)`` (no pickled code runs on load).  It is
written to a temporary file in the same folder, fsynced, and moved over the
old one with ``os.replace``: a crash or a full disk mid-write leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from ..errors import PyroVAEError
from ..models.params import restore_params
from .files import write_atomic

FORMAT = "pyro_vae.checkpoint"
#: 2: a one-latent model is a graph (its weights under the graph's names); 1 is read through :func:`upgrade`
FORMAT_VERSION = 2


def write_payload(payload: dict, f) -> None:
    """Serialize into an open file (a seam: tests replace it to simulate a full disk or a kill)."""
    torch.save(payload, f)


def save_checkpoint(payload: dict, path: os.PathLike) -> None:
    """Write ``payload`` to ``path`` atomically: all of it or, on any failure, none of it.

    A failed write (full disk, no permission) raises :class:`PyroVAEError`
    and leaves the previous checkpoint untouched.
    """
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    try:
        write_atomic(path, lambda f: write_payload(payload, f), what="checkpoint")
    except PyroVAEError as e:
        raise PyroVAEError(f"{e}, then --resume") from None


def load_checkpoint(path: os.PathLike, map_location="cpu") -> dict:
    """Load and check a checkpoint; every failure is one line naming the file and the reason."""
    path = Path(path)
    if not path.exists():
        raise PyroVAEError(f"checkpoint {str(path)!r} does not exist: is this a run directory?")
    if path.is_dir():
        raise PyroVAEError(f"checkpoint {str(path)!r} is a folder, not a file: give the run directory instead")
    size = path.stat().st_size
    if size == 0:
        raise PyroVAEError(
            f"checkpoint {str(path)!r} is empty (0 bytes): restore it from a backup or retrain"
        )
    problem = _container_problem(path, size)
    if problem:
        raise PyroVAEError(f"checkpoint {str(path)!r} {problem}: restore it from a backup or retrain")
    try:
        # weights_only: tensors, numbers, strings and containers only; no pickled code runs
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is long; keep its one specific line ("Unsupported global: GLOBAL x.y ...")
        found = [l.split("WeightsUnpickler error:")[-1].strip() for l in str(e).splitlines() if "Unsupported" in l]
        reason = f" ({found[0].split(' was not')[0][:120]})" if found else ""
        raise PyroVAEError(
            f"checkpoint {str(path)!r} holds objects other than tensors and plain values, which are not loaded "
            f"for safety{reason}: it was not written by pyro_vae"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PyroVAEError(
            f"checkpoint {str(path)!r} is corrupt ({reason[:160]}): restore it from a backup or retrain"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PyroVAEError(f"{str(path)!r} is not a pyro_vae checkpoint")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise PyroVAEError(
            f"checkpoint {str(path)!r} has format version {version}, newer than this pyro_vae reads "
            f"({FORMAT_VERSION}): upgrade pyro_vae"
        )
    return payload


def _container_problem(path: Path, size: int) -> str:
    """Why ``path`` is not a whole torch zip archive ('' if it looks like one)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":
        return f"is not a PyTorch checkpoint ({size} bytes that do not start like one: random bytes or another format)"
    if not zipfile.is_zipfile(path):
        # the zip directory sits at the end of the file: without it the file was cut short
        return f"is truncated ({size} bytes; its end is missing, e.g. a copy or download that stopped early)"
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as e:
        return f"is corrupt ({str(e)[:120]})"
    if bad is not None:
        return f"is corrupt (member {bad!r} fails its checksum)"
    return ""


def load_state_dict_checked(module: torch.nn.Module, state: dict, path) -> None:
    """``load_state_dict`` with a readable error when the architecture differs."""
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = [l.strip() for l in str(e).splitlines() if l.strip()][1:2]
        detail = first[0] if first else "parameter names or shapes differ"
        raise PyroVAEError(
            f"checkpoint {str(path)!r} was saved from a different architecture ({detail[:200]}): "
            "use the config.toml saved with it"
        ) from None


#: the prefix of a param-store entry's name in a checkpoint's "params" (the trainer's naming)
PARAM_STORE_PREFIX = "param_store:"


def restore_model(model, payload: dict, path) -> None:
    """A checkpoint's trained parameters into ``model``: its Module weights, and its param-store entries
    (``pyro.param``/``pyro.module`` globals) into the model's own parameter scope."""
    state = payload.get("model") or {}
    if isinstance(model, torch.nn.Module):
        load_state_dict_checked(model, state, path)
    elif state:
        raise PyroVAEError(f"checkpoint {str(path)!r} holds the weights of an nn.Module, but the model given is a "
                           f"{type(model).__name__}: load it into the model it was trained with")
    params = payload.get("params") or {}
    restore_params(model, {name[len(PARAM_STORE_PREFIX):]: value for name, value in params.items()
                           if name.startswith(PARAM_STORE_PREFIX)})


def _v1_names(model_section: dict):
    """(old prefix, new prefix) pairs of a format-1 one-latent VAE's weights, as its graph {z, x} names them."""
    enc = (model_section.get("encoder") or {}).get("type", "mlp")
    dec = (model_section.get("decoder") or {}).get("type", "mlp")
    tied = bool(model_section.get("tied", False))
    pairs = [("prior.loc", "families.z.prior_loc"), ("prior.scale", "families.z.prior_scale"),
             ("likelihood.", "likelihoods.x.")]
    pairs += ([("encoder.net.0.", "encoders.z.conv."), ("encoder.net.1.", "encoders.z.mlp.")] if enc == "conv"
              else [("encoder.net.", "encoders.z.mlp.")])
    pairs.append(("decoder.", "nets.x.net." if dec == "conv" or tied else "nets.x.mlp."))
    return pairs


def upgrade(payload: dict, model) -> dict:
    """A format-1 checkpoint of a one-latent model (the VAE class of old) in the graph's names: its weights
    renamed, and its optimizer state reordered to the graph's parameter order.  Other checkpoints as they are."""
    config = payload.get("config") or {}
    section = config.get("model") or {}
    if payload.get("format_version") != 1 or "nodes" in section or "program" in section or not payload.get("model"):
        return payload
    pairs = _v1_names(section)

    def rename(key: str) -> str:
        for old, new in pairs:
            if key == old or (old.endswith(".") and key.startswith(old)):
                return new + key[len(old):]
        return key

    state = {rename(k): v for k, v in payload["model"].items()}
    params = [n for n, _ in model.named_parameters()]
    old_order = [k for k in map(rename, payload["model"]) if k in params]  # a Module's parameters in its order
    out = dict(payload, model=state, format_version=FORMAT_VERSION)
    optimizer = payload.get("optimizer")
    if optimizer and sorted(old_order) == sorted(params):
        where = {name: i for i, name in enumerate(old_order)}
        moved = {j: optimizer["state"][where[name]] for j, name in enumerate(params) if where[name] in optimizer["state"]}
        groups = [dict(g, params=list(range(len(params)))) for g in optimizer["param_groups"]]
        out["optimizer"] = dict(optimizer, state=moved, param_groups=groups)
    return out
