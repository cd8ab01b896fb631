"""Our trainer vs a hand-written PyTorch VAE: ms per step, images/s, peak memory, time to an ELBO.

Model: 784-400-20 MLP VAE, Bernoulli likelihood, Adam 1e-3, Fashion-MNIST
(static binarization).  The hand-written reference is the best plain PyTorch
loop: BCE-with-logits plus the closed-form KL, ``torch.optim.Adam`` with its
default kernel (as ``pytorch/examples`` writes it); a second reference uses
``Adam(fused=True)``.  Both start from our model's initial weights and see the
same batches in the same order.

Every variant runs in this one process; blocks (one ``Trainer.fit`` epoch over
a slice of the data for ours, the same slice and order for the reference)
alternate, the order rotating each round, and the ratios are medians of
per-round ratios.  Tables:

1. ms/step, images/s, peak memory and ratios at batch 32/128/1024, on CPU and
   (when ``torch.cuda.is_available()``) CUDA, incl. ``Trainer(cuda_graph=True)``;
2. what each optimization buys: ours with one of them switched back off;
3. time to reach a test ELBO (same estimator for both: analytic KL + 4-sample
   reconstruction on the 10k test images);
4. scaling: epoch time against the number of images, in memory and through a
   memory-mapped ``.npy`` file.

    python benchmarks/bench_train.py                  # ~3-5 min on 2 idle CPU cores
    python benchmarks/bench_train.py --rounds 9 --elbo-epochs 10 --threads 1
    python benchmarks/bench_train.py --only steps --batches 128
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import (HandRunner, HandVAE, OurRunner, alternate, fashion_mnist, machine_line, max_rss_mib, median,
                     our_encode_decode, our_model, paired_ratio, table, test_elbo)

from pyro.infer import TraceMeanField_ELBO  # noqa: E402
from pyro_vae.training.optim import restore_kernel_choice  # noqa: E402

SECTIONS = ("steps", "ablation", "elbo", "scaling")


# -- variants -------------------------------------------------------------------
def make_variant(name: str, device: str, batch_size: int, data_size: int):
    """A runner with ``train_block(rows) -> seconds``; every variant starts from the same weights."""
    ours = our_model()
    if name == "torch":
        return HandRunner(HandVAE().copy_from(ours), device, batch_size, data_size)
    if name == "torch_fused":
        return HandRunner(HandVAE().copy_from(ours), device, batch_size, data_size, adam="fused")
    elbo = "trace" if "trace" in name else "meanfield"
    kwargs = {}
    if "graph" in name:
        kwargs["cuda_graph"] = True
    if "always_validate" in name or name == "ours_before":
        kwargs["validation"] = "always"
    runner = OurRunner(ours, device, batch_size, elbo, data_size, **kwargs)
    t = runner.trainer
    if "no_capture" in name or name == "ours_before":
        t.config = dataclasses.replace(t.config, capture="off")
    t.setup(torch.zeros(2, 784, device=device), data_size)
    if "foreach_adam" in name or name == "ours_before":
        restore_kernel_choice(t.optimizer, fused=None, foreach=True, capturable=False)  # the previous kernel
    if "pyro_objective" in name or name == "ours_before":
        t.objective = TraceMeanField_ELBO(max_plate_nesting=1)
    return runner


def block_rows(train: torch.Tensor, batch_size: int, images: int, r: int) -> torch.Tensor:
    """The r-th block of whole batches, cycling through the training set."""
    k = max(2, images // batch_size) * batch_size
    start = (max(r, 0) * k) % (train.shape[0] - k + 1)
    return train[start : start + k]


def step_table(train, device, batches, variants, rounds, block_images, memory):
    rows_out = []
    for b in batches:
        runners = {v: make_variant(v, device, b, train.shape[0]) for v in variants}
        peak = {}

        def run(v):
            def f(r):
                rows = block_rows(train, b, block_images, r)
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                secs = runners[v].train_block(rows)
                if device == "cuda":
                    peak[v] = max(peak.get(v, 0), torch.cuda.max_memory_allocated() / 2**20)
                return 1e3 * secs / (rows.shape[0] // b)
            return f

        res = alternate({v: run(v) for v in variants}, rounds)
        if device == "cpu" and memory:  # a fresh process per measurement: the reference and ours
            peak = {v: cpu_peak_memory(v, b) for v in ("torch", "ours")}
        for v in variants:
            ms = median(res[v])
            rows_out.append([b, v, ms, b * 1e3 / ms, peak.get(v, "-"),
                             paired_ratio(res[v], res["torch"]), paired_ratio(res[v], res["torch_fused"])])
        print(f"  batch {b}: " + ", ".join(f"{v} {median(res[v]):.2f} ms" for v in variants), flush=True)
    return table(["batch", "variant", "ms / step", "images / s", "peak MiB", "ratio to torch",
                  "ratio to torch (fused Adam)"], rows_out)


def cpu_peak_memory(variant: str, batch_size: int) -> float:
    """Peak RSS growth (MiB) while training, over the loaded data and built model, in a fresh process."""
    cmd = [sys.executable, __file__, "--memory-probe", variant, "--batches", str(batch_size),
           "--threads", str(torch.get_num_threads())]
    # glibc keeps freed blocks in its heap, so the peak RSS would count whatever the heap happened to
    # hold; with every allocation over 64 KiB mapped and unmapped, the peak is the live tensors' peak
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parent, env=env)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]
    except (IndexError, ValueError, KeyError):
        print(out.stderr[-2000:], file=sys.stderr)
        return float("nan")


def _rss_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(field)


def memory_probe(variant: str, batch_size: int) -> None:
    train, _ = fashion_mnist(20 * batch_size)
    runner = make_variant(variant, "cpu", batch_size, 60000)
    runner.train_block(train[: 2 * batch_size])  # allocator, optimizer state, imports
    try:
        # reset the peak-RSS counter to the current RSS (Linux >= 4.0), so loading
        # the data (whose temporaries peak higher than training) is not counted
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _rss_mib("VmRSS")
        runner.train_block(train)
        peak = _rss_mib("VmHWM") - base
    except OSError:  # not Linux: the process's peak so far, a weaker bound
        base = max_rss_mib()
        runner.train_block(train)
        peak = max_rss_mib() - base
    print(json.dumps({"peak_mib": peak}))


# -- ablation -----------------------------------------------------------------------
# (variant, what is switched off, the variant its "ms vs" column compares with)
ABLATION = [
    ("ours", "all of the below on", None),
    ("ours_no_capture", "step capture off: Pyro's model, guide and autograd run every step", "ours"),
    ("ours_no_capture_foreach_adam", "capture off, and foreach Adam instead of fused", "ours_no_capture"),
    ("ours_no_capture_always_validate", "capture off, and Pyro validation on every step", "ours_no_capture"),
    ("ours_no_capture_pyro_objective", "capture off, and Pyro's TraceMeanField_ELBO (host syncs, every density)",
     "ours_no_capture"),
    ("ours_before", "all of them off: the trainer before the performance work", "ours"),
]


def ablation_table(train, device, batch_size, rounds, block_images):
    names = ["torch"] + [n for n, _, _ in ABLATION]
    runners = {v: make_variant(v, device, batch_size, train.shape[0]) for v in names}

    def run(v):
        def f(r):
            rows = block_rows(train, batch_size, block_images, r)
            return 1e3 * runners[v].train_block(rows) / (rows.shape[0] // batch_size)
        return f

    res = alternate({v: run(v) for v in names}, rounds)
    out = [["hand-written PyTorch (reference)", median(res["torch"]), 1.0, ""]]
    for v, what, base in ABLATION:
        delta = "" if base is None else f"{median(res[v]) - median(res[base]):+.2f} vs {base}"
        out.append([f"{v}: {what}", median(res[v]), paired_ratio(res[v], res["torch"]), delta])
    return table([f"variant (batch {batch_size}, {device})", "ms / step", "ratio to torch",
                  "ms vs"], out)


# -- time to reach a test ELBO ---------------------------------------------------------
def elbo_table(train, test, device, batch_size, epochs, target):
    ours_model = our_model()
    hand = HandRunner(HandVAE().copy_from(ours_model), device, batch_size, train.shape[0])
    ours = OurRunner(ours_model, device, batch_size, "meanfield", train.shape[0])
    test = test.to(device)
    curves = {"ours": [(0.0, None)], "torch": [(0.0, None)]}

    def evaluate(name):
        if name == "ours":
            ours_model.eval()
            e = test_elbo(*our_encode_decode(ours_model), test)
            ours_model.train()
        else:
            e = test_elbo(hand.net.encode, hand.net.dec, test)
        return e

    for ep in range(epochs):
        for name, runner in (("ours", ours), ("torch", hand)) if ep % 2 == 0 else (("torch", hand), ("ours", ours)):
            secs = runner.train_block(train)
            t_prev = curves[name][-1][0]
            curves[name].append((t_prev + secs, evaluate(name)))
        print(f"  epoch {ep + 1}: ours {curves['ours'][-1][1]:.2f} nats ({curves['ours'][-1][0]:.1f} s), "
              f"torch {curves['torch'][-1][1]:.2f} nats ({curves['torch'][-1][0]:.1f} s)", flush=True)
    if target is None:  # a level both reached: the worse of the two final ELBOs
        target = min(curves["ours"][-1][1], curves["torch"][-1][1])
    rows = []
    for name in ("torch", "ours"):
        c = curves[name][1:]
        hit = next((i for i, (_, e) in enumerate(c) if e >= target), None)
        if hit is None:
            rows.append([name, f"not reached in {epochs} epochs", "", f"{c[-1][1]:.2f}"])
            continue
        t1, e1 = c[hit]
        t0, e0 = (0.0, None) if hit == 0 else c[hit - 1]
        # linear interpolation between the two evaluations around the target
        secs = t1 if e0 is None or e1 == e0 else t0 + (t1 - t0) * (target - e0) / (e1 - e0)
        rows.append([name, f"{hit + 1}", f"{secs:.1f}", f"{c[-1][1]:.2f}"])
    ratio = ""
    if rows[0][2] and rows[1][2]:
        ratio = f"; time ratio ours/torch = {float(rows[1][2]) / float(rows[0][2]):.2f}"
    head = f"target test ELBO {target:.2f} nats/image, batch {batch_size}, {device}{ratio}"
    return head + "\n\n" + table(["variant", "epochs to target", "seconds to target",
                                  f"test ELBO after {epochs} epochs"], rows)


# -- scaling ---------------------------------------------------------------------------
def scaling_table(train, rounds, batch_size, sizes):
    from pyro_vae.config import DataConfig
    from pyro_vae.data.sources import load_data
    from pyro_vae.data.mapped import MappedRows

    variants, rows_of = {}, {}
    for n in sizes:
        rows_of[f"{n} in memory"] = train[:n]
    n_max = sizes[-1]
    tmp = tempfile.mkdtemp(prefix="bench-mmap-")
    path = Path(tmp) / "train.npy"
    np.save(path, train[:n_max].numpy())
    old = os.environ.get("PYRO_VAE_MEMMAP_BYTES")
    os.environ["PYRO_VAE_MEMMAP_BYTES"] = str(1 << 20)  # force the memory-map path
    try:
        ds = load_data(DataConfig(train=str(path), source="arrays", test_fraction=0.0, binarize="none"), "bernoulli")
    finally:
        if old is None:
            os.environ.pop("PYRO_VAE_MEMMAP_BYTES")
        else:
            os.environ["PYRO_VAE_MEMMAP_BYTES"] = old
    assert isinstance(ds.train, MappedRows)
    rows_of[f"{n_max} memory-mapped .npy"] = ds.train
    for key, rows in rows_of.items():
        runner = OurRunner(our_model(), "cpu", batch_size, "meanfield", len(rows))
        variants[key] = (lambda runner, rows: lambda r: runner.train_block(rows if r >= 0 else rows[: 4 * batch_size]))(runner, rows)
    res = alternate(variants, rounds)
    base_key = f"{sizes[0]} in memory"
    per_image0 = median(res[base_key]) / sizes[0]
    out = []
    for key in res:
        n = int(key.split()[0])
        s = median(res[key])
        out.append([key, s, 1e6 * s / n, s / (per_image0 * n)])
    os.remove(path)
    os.rmdir(tmp)
    return table([f"training images (batch {batch_size})", "s / epoch", "µs / image",
                  f"epoch time / linear prediction from {sizes[0]}"], out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="blocks per variant (alternating)")
    ap.add_argument("--batches", default="32,128,1024")
    ap.add_argument("--block-images", type=int, default=4096, help="images per timed block")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--devices", default=None, help="cpu,cuda (default: cpu, plus cuda when available)")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"sections to run, of {', '.join(SECTIONS)}")
    ap.add_argument("--elbo-epochs", type=int, default=3)
    ap.add_argument("--target-elbo", type=float, default=None, help="default: the worse of the two final ELBOs")
    ap.add_argument("--scaling-sizes", default="7500,15000,30000,60000")
    ap.add_argument("--no-memory", action="store_true", help="skip the CPU peak-memory subprocesses")
    ap.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    if args.memory_probe:
        memory_probe(args.memory_probe, batches[0])
        return
    sections = args.only.split(",")
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    train, test = fashion_mnist()
    print(machine_line())
    print("model: 784-400-20 MLP VAE, Bernoulli likelihood, Adam 1e-3, Fashion-MNIST (static binarization)\n")
    t_start = time.perf_counter()
    for device in devices:
        if device == "cuda" and not torch.cuda.is_available():
            print("cuda: no GPU available, skipped")
            continue
        x = train.to(device)
        if "steps" in sections:
            variants = ["torch", "torch_fused", "ours", "ours_trace", "ours_no_capture"] + (["ours_graph"] if device == "cuda" else [])
            print(f"## 1. ms per training step, {device} ({args.rounds} alternating blocks of ~{args.block_images} images)")
            print(step_table(x, device, batches, variants, args.rounds, args.block_images,
                             memory=not args.no_memory), "\n", flush=True)
        if "ablation" in sections:
            b = 128 if 128 in batches else batches[0]
            print(f"## 2. what each optimization buys, {device}")
            print(ablation_table(x, device, b, args.rounds, args.block_images), "\n", flush=True)
        if "elbo" in sections:
            print(f"## 3. time to reach a test ELBO, {device}")
            print(elbo_table(x, test, device, 128, args.elbo_epochs, args.target_elbo), "\n", flush=True)
    if "scaling" in sections:
        sizes = [int(s) for s in args.scaling_sizes.split(",")]
        print("## 4. scaling with the number of images (cpu; ours, meanfield)")
        print(scaling_table(train, max(2, args.rounds // 2), 128, sizes), "\n", flush=True)
    print("ratios: median over rounds of ours/reference, each pair timed back to back; < 1 means ours is faster")
    print(f"total {time.perf_counter() - t_start:.0f} s; {machine_line()}")


if __name__ == "__main__":
    main()
