#!/usr/bin/env python3
"""The MNIST MLP of configs/mnist-mlp.toml in PyTorch, as the throughput peer of
`frugal train` (docs/benchmarks.md): same layers (784-512-256-10, ReLU, dropout 0.1),
AdamW (lr 2e-3, weight decay 1e-4, cosine after 100 warm-up steps), batch 128, the same
thread count, one shuffled pass per epoch from memory.

    python bench/peers/mnist_mlp_torch.py --mnist DIR [--epochs 6] [--threads 2] [--batch 128]
        [--device cpu|cuda] [--precision f32|bf16|f16]

Prints one JSON line: samples_per_s (training steps only, like frugal's), test_accuracy,
steps, train_seconds, peak_rss_bytes, device, precision; on cuda also peak_device_bytes
and peak_device_reserved_bytes (the caching allocator's high-water marks, MNIST itself
included) and gpu.

On cuda the peer is what a PyTorch user after speed would write: MNIST is moved to the
GPU once and every epoch's shuffle is drawn there, so a step is an index, a forward, a
backward and an update with no host transfer. The clock is read once per epoch, each time
after torch.cuda.synchronize(): per-step reads would add a host round trip to every step
that such a user would not pay. f32 stays strict f32 (TF32 off, PyTorch's default). bf16
and f16 run under autocast, f16 with a GradScaler; on the CPU only bf16 autocast is offered.
"""

import argparse
import gzip
import json
import math
import os
import resource
import time

import numpy as np
import torch
from torch import nn


def idx(path):
    for p in (path + ".gz", path):
        if os.path.exists(p):
            opener = gzip.open if p.endswith(".gz") else open
            with opener(p, "rb") as f:
                data = f.read()
            ndim = data[3]
            dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
            return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)
    raise SystemExit(f"{path}(.gz) not found")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mnist", required=True)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", choices=["f32", "bf16", "f16"], default="f32")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: PyTorch sees no CUDA device")
    if args.device == "cpu" and args.precision == "f16":
        raise SystemExit("--precision f16 needs --device cuda (the CPU offers bf16 autocast)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cuda = args.device == "cuda"
    device = torch.device(args.device)
    autocast = torch.autocast(
        args.device,
        dtype={"bf16": torch.bfloat16, "f16": torch.float16}.get(args.precision, torch.bfloat16),
        enabled=args.precision != "f32",
    )
    # bf16 keeps f32's exponent range; only f16 needs its loss scaled.
    scaler = torch.amp.GradScaler("cuda", enabled=args.precision == "f16") if cuda else None

    x = torch.from_numpy(idx(os.path.join(args.mnist, "train-images-idx3-ubyte")).reshape(-1, 784).astype(np.float32) / 255.0)
    y = torch.from_numpy(idx(os.path.join(args.mnist, "train-labels-idx1-ubyte")).astype(np.int64))
    tx = torch.from_numpy(idx(os.path.join(args.mnist, "t10k-images-idx3-ubyte")).reshape(-1, 784).astype(np.float32) / 255.0)
    ty = torch.from_numpy(idx(os.path.join(args.mnist, "t10k-labels-idx1-ubyte")).astype(np.int64))
    x, y, tx, ty = (t.to(device) for t in (x, y, tx, ty))

    model = nn.Sequential(
        nn.Linear(784, 512), nn.ReLU(), nn.Dropout(0.1),
        nn.Linear(512, 256), nn.ReLU(), nn.Dropout(0.1),
        nn.Linear(256, 10),
    )
    # Initialised on the CPU either way, so both devices start from the same weights.
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    per_epoch = math.ceil(len(x) / args.batch)
    total = per_epoch * args.epochs
    warmup = 100

    def lr_at(step):
        if step < warmup:
            return 2e-3 * (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return 2e-3 * 0.5 * (1 + math.cos(math.pi * t))

    loss_fn = nn.CrossEntropyLoss()

    def train_step(idxs):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(model(x[idxs]), y[idxs])
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    step, seconds, samples = 0, 0.0, 0
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x), device=device)
        if cuda:
            torch.cuda.synchronize()
            began = time.perf_counter()
            for i in range(per_epoch):
                idxs = perm[i * args.batch : (i + 1) * args.batch]
                train_step(idxs)
                samples += len(idxs)
                step += 1
            torch.cuda.synchronize()
            seconds += time.perf_counter() - began
            continue
        for i in range(per_epoch):
            idxs = perm[i * args.batch : (i + 1) * args.batch]
            began = time.perf_counter()
            train_step(idxs)
            seconds += time.perf_counter() - began
            samples += len(idxs)
            step += 1
    model.eval()
    with torch.no_grad(), autocast:
        correct = sum(
            (model(tx[i : i + 1000]).argmax(1) == ty[i : i + 1000]).sum().item()
            for i in range(0, len(tx), 1000)
        )
    report = {
        "peer": f"pytorch {torch.__version__}",
        "threads": args.threads,
        "batch": args.batch,
        "steps": step,
        "train_seconds": seconds,
        "samples_per_s": samples / seconds,
        "test_accuracy": correct / len(tx),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "device": args.device,
        "precision": args.precision,
    }
    if cuda:
        report["peak_device_bytes"] = torch.cuda.max_memory_allocated()
        report["peak_device_reserved_bytes"] = torch.cuda.max_memory_reserved()
        report["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
