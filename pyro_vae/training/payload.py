"""A trainer's checkpoint payload: parameters, the optimizer's moments, the training state and every random stream.

What the payload is saved in (a run folder's checkpoint.pt, or anything a caller's callback chooses) is not the
trainer's business; store/checkpoint.py writes and reads the file, and checks a module's weights against it.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import PyroVAEError
from ..serialize import to_plain
from ..store.checkpoint import PARAM_STORE_PREFIX, load_state_dict_checked
from .optim import restore_kernel_choice


def trainer_payload(model, params: Sequence[torch.Tensor], param_names: Sequence[str], optimizer, state, config) -> dict:
    """Everything a resume needs, as tensors and plain values (it loads with ``weights_only=True``)."""
    return {
        "model": model.state_dict() if isinstance(model, torch.nn.Module) else {},
        "params": {name: p.detach().cpu() for name, p in zip(param_names, params)
                   if name.startswith(PARAM_STORE_PREFIX)},
        "optimizer": optimizer.state_dict(),
        "train_state": state.to_dict(),
        "rng": state.rng_dict(),
        "train_config": to_plain(config),
    }


def restore_weights(payload: dict, path, model, params: Sequence[torch.Tensor], param_names: Sequence[str],
                    optimizer, kernel_choice: dict) -> None:
    """The payload's parameters and optimizer moments into a set-up trainer's (the training state is the caller's)."""
    if isinstance(model, torch.nn.Module):
        load_state_dict_checked(model, payload["model"], path)
    with torch.no_grad():
        lookup = dict(zip(param_names, params))
        for name, value in payload.get("params", {}).items():
            if name not in lookup:
                raise PyroVAEError(f"checkpoint {path!s} has parameter {name!r} that the model lacks")
            lookup[name].copy_(value)
    try:
        optimizer.load_state_dict(payload["optimizer"])
    except (ValueError, KeyError) as e:
        raise PyroVAEError(f"checkpoint {path!s}: optimizer state does not fit this model ({e})") from None
    # the saved groups carry the saving trainer's kernel flags; keep this trainer's
    restore_kernel_choice(optimizer, **kernel_choice)
