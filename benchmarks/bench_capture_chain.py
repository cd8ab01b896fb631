"""Step capture for a declared chain: seconds of training with ``train.capture = "on"`` against ``"off"``.

The recording of a chain's step holds its loop over time unrolled, so it costs a first step of several
seconds; a replay then saves Python overhead on every later step.  This measures both, per example
(``examples/sequence_dmm.toml``, ``examples/sequence_linear_gaussian.toml`` at their sizes): the first epoch
(the recording included), the median of the later epochs, and the steps per epoch, so the break-even number of
steps is read off.  Variants alternate in each round, the order rotating.

    python benchmarks/bench_capture_chain.py --rounds 2 --epochs 3
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import warnings

import torch

from _common import ROOT, machine_line, median, table

import pyro_vae as pv  # noqa: E402
from pyro_vae.config.schema import TrainConfig  # noqa: E402

EXAMPLES = {"linear_gaussian": ("sequence_linear_gaussian.toml", "normal"), "dmm": ("sequence_dmm.toml", "bernoulli")}


def fit(name: str, data, epochs: int, capture: str, seed: int):
    """(first epoch's seconds, the later epochs' median, whole fit's seconds, whether a step was replayed)."""
    cfg = pv.load_config(ROOT / "examples" / EXAMPLES[name][0])
    torch.manual_seed(seed)
    model = pv.build_model(cfg.model, int(data["x"].shape[-1]))
    config = TrainConfig(epochs=epochs, batch_size=cfg.train.batch_size, lr=cfg.train.lr, seed=seed,
                         eval_every=10 ** 6, threads=1, capture=capture)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = pv.fit(model, data, config=config, progress=False)
    total = time.perf_counter() - t0
    seconds = [h["seconds"] for h in trainer.state.history]
    replayed = bool(trainer.captured_shapes)
    return seconds[0], median(seconds[1:]) if len(seconds) > 1 else float("nan"), total, replayed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--examples", nargs="+", default=list(EXAMPLES), choices=list(EXAMPLES))
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(machine_line())
    rows = []
    for name in args.examples:
        cfg = pv.load_config(ROOT / "examples" / EXAMPLES[name][0])
        data_cfg = dataclasses.replace(cfg.data, test_fraction=0.0)
        data = pv.load_data(data_cfg, EXAMPLES[name][1], ("x",)).train
        n = int(data["x"].shape[0])
        steps = -(-n // cfg.train.batch_size)
        got = {"on": [], "off": []}
        for r in range(args.rounds):
            for capture in (("on", "off") if r % 2 == 0 else ("off", "on")):
                got[capture].append(fit(name, data, args.epochs, capture, r))
                first, later, total, replayed = got[capture][-1]
                print(f"  {name} round {r} capture={capture}: epoch 1 {first:.2f} s, later epochs {later:.2f} s, "
                      f"fit {total:.1f} s, replayed {replayed}", flush=True)
        first = {c: median([g[0] for g in got[c]]) for c in got}
        later = {c: median([g[1] for g in got[c]]) for c in got}
        saved = (later["off"] - later["on"]) / steps  # seconds a replayed step saves
        cost = first["on"] - first["off"] + saved * steps  # the recording's own cost
        rows.append([name, n, steps, f"{first['off']:.2f}", f"{first['on']:.2f}", f"{later['off']:.2f}",
                     f"{later['on']:.2f}", f"{later['on'] / later['off']:.2f}",
                     f"{cost / saved:.0f}" if saved > 0 else "never", str(all(g[3] for g in got["on"]))])
    print(table(["example", "sequences", "steps/epoch", "epoch 1 off", "epoch 1 on", "later off", "later on",
                 "on/off later", "break-even steps", "replayed"], rows))


if __name__ == "__main__":
    main()
