"""Resource sizes checked before allocating: a model's parameters and generated arrays against this machine's memory.

A size typed by mistake (``model.latent_dim = 1000000000``, a categorical
data column whose largest value is 1e9, ``data.num_points = 10**12``) would
otherwise fail deep inside torch with an allocator error, or swap the machine
to a halt.  The estimates here are lower bounds of what the allocation needs,
so a configuration that fits is never refused; one that cannot fit fails in
one line that names the key and the fix.
"""

from __future__ import annotations

import os
from typing import List, Optional, Tuple

from ..errors import PyroVAEError

#: bytes per trained parameter: the float32 value, its gradient and Adam's two moments
BYTES_PER_PARAMETER = 16

#: the most integer levels a categorical likelihood infers from the data (one softmax per dimension)
MAX_INFERRED_LEVELS = 1 << 16


def physical_memory_bytes() -> Optional[int]:
    """This machine's RAM in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: float) -> str:
    g = n / 2**30
    return f"{g:.3g}" if g < 1000 else f"{g:,.0f}"


def check_fits(nbytes: int, what: str, fix: str, memory: Optional[int] = None) -> None:
    """Raise one line if ``nbytes`` (``what`` needs them) exceed this machine's memory."""
    memory = physical_memory_bytes() if memory is None else memory
    if memory is not None and nbytes > memory:
        raise PyroVAEError(
            f"{what} needs ~{_gib(nbytes)} GiB, more than this machine's {_gib(memory)} GiB: {fix}"
        )


def _mlp_layers(sizes: List[Tuple[int, str]]) -> List[Tuple[int, str]]:
    """(parameters, the key of the larger side) of each linear layer through ``sizes``."""
    out = []
    for (a, ka), (b, kb) in zip(sizes, sizes[1:]):
        out.append((a * b + b, ka if a >= b else kb))
    return out


def model_parameter_count(model_cfg, data_dim: int) -> Tuple[int, str]:
    """The number of parameters of a config's encoder and decoder MLPs, and the key that dominates it."""
    m = model_cfg
    per_dim = 1
    if m.likelihood == "categorical":
        per_dim = int(m.levels or 2)
    elif m.scale == "amortized":
        per_dim = 2
    out_key = "model.levels" if m.likelihood == "categorical" else "data dimension"
    enc_out = (2 if m.guide == "normal" else 1) * m.latent_dim
    enc = [(data_dim, "data dimension")] + [(h, f"model.encoder.hidden[{i}]") for i, h in enumerate(m.encoder.hidden)]
    enc.append((enc_out, "model.latent_dim"))
    dec = [(m.latent_dim, "model.latent_dim")] + [(h, f"model.decoder.hidden[{i}]") for i, h in enumerate(m.decoder.hidden)]
    dec.append((data_dim * per_dim, out_key))
    layers = _mlp_layers(enc)
    if getattr(m, "tied", False):
        layers += [(b, key) for b, key in dec[1:]]  # tied decoder: the encoder's weights, its own biases
    else:
        layers += _mlp_layers(dec)
    total = sum(n for n, _ in layers)
    return total, max(layers, key=lambda t: t[0])[1]


def check_model_size(model_cfg, data_dim: int, memory: Optional[int] = None) -> None:
    """Refuse, in one line, a model whose parameters (with gradients and Adam state) cannot fit in memory.

    Call it after the data are loaded and ``model.levels`` is resolved, before the model is built.
    """
    count, key = model_parameter_count(model_cfg, data_dim)
    value = {"model.latent_dim": model_cfg.latent_dim, "model.levels": model_cfg.levels}.get(key)
    if key.startswith("model.encoder.hidden") or key.startswith("model.decoder.hidden"):
        net = model_cfg.encoder if ".encoder." in key else model_cfg.decoder
        value = net.hidden[int(key.rsplit("[", 1)[1][:-1])]
    named = f"{key} = {value}" if value is not None else f"the data's {data_dim} columns"
    check_fits(
        count * BYTES_PER_PARAMETER,
        f"the model ({count:,} parameters, mostly from {named}) with its gradients and optimizer state",
        "use smaller sizes" if value is not None else "use fewer columns or smaller hidden sizes",
        memory,
    )


#: where a graph model's parameters live -> the node key that sizes them
_GRAPH_PARTS = {"nets": "net", "encoders": "encoder", "likelihoods": "likelihood", "families": "dim"}


def check_graph_size(spec, data_dim: int, image_shape=None, memory: Optional[int] = None) -> None:
    """As :func:`check_model_size` for a graph: the model is built on torch's meta device (no memory, no
    random numbers drawn) and its parameters counted, so the count is the compiler's own."""
    import torch

    from ..models import build_model

    with torch.device("meta"):
        model = build_model(spec, data_dim, image_shape)
    params = list(model.named_parameters())
    count = sum(p.numel() for _, p in params)
    name = max(params, key=lambda kv: kv[1].numel())[0] if params else "?"
    part, _, rest = name.partition(".")
    node = rest.partition(".")[0]
    where = f"model.nodes.{node}.{_GRAPH_PARTS[part]}" if part in _GRAPH_PARTS else "the data's columns"
    check_fits(count * BYTES_PER_PARAMETER,
               f"the model ({count:,} parameters, mostly from {where}) with its gradients and optimizer state",
               "use smaller sizes", memory)


def check_synthetic_size(cfg, memory: Optional[int] = None) -> None:
    """Refuse synthetic sizes whose arrays (latents, hidden layer, data and noise) cannot fit in memory."""
    per_point = cfg.synthetic_latent_dim + 32 + 2 * cfg.synthetic_dim
    check_fits(
        4 * cfg.num_points * per_point,
        f"the synthetic data (data.num_points = {cfg.num_points} x data.synthetic_dim = {cfg.synthetic_dim})",
        "lower data.num_points or data.synthetic_dim",
        memory,
    )


def inferred_levels(train, test) -> int:
    """Categorical levels for data whose values are 0..K-1: ``max + 1``, refused if absurdly many.

    For ``model.levels`` left unset; the check stops a column holding e.g. 1e9
    (not a category code) from becoming a billion-way softmax.
    """
    top = max(float(train.max()), float(test.max()))
    if not top < MAX_INFERRED_LEVELS:  # also catches NaN
        raise PyroVAEError(
            f"likelihood 'categorical' would infer {top:.6g} + 1 levels from the data's largest value "
            f"(at most {MAX_INFERRED_LEVELS} are inferred): set model.levels, or recode the data as 0..K-1"
        )
    return max(2, int(top) + 1)
