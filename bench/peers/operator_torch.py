#!/usr/bin/env python3
"""The randomly drawn neural operator of frugal-models (crates/frugal-models/src/operator.rs)
in PyTorch, as the peer of `frugal bench` on an `operator` configuration: a batch of fields
rolled out autoregressively, state + dt·op(state), every `record_every`-th state copied to
the host in f16, as `frugal operator generate` records it. Timed.

    python bench/peers/operator_torch.py --layers 4 --channels 64 [--kernel 3]
        [--norm instance|none] [--activation gelu|tanh|relu] [--residual 1|0] [--dt 0.05]
        [--height 128] [--width 128] [--fields 3] [--batch 2] [--steps 500]
        [--record-every 10] [--storage f16|f32] [--repeats 3] [--warmup 1]
        [--precision f32|bf16|f16] [--device cpu|cuda] [--threads N] [--seed 0]

The network is frugal's, layer for layer: the first convolution maps the fields to
`channels`, the hidden ones keep that width, the last maps back; every convolution sees the
field wrapped around its edges (circular padding, a periodic domain); hidden layers are
followed by instance norm without affine parameters (eps 1e-5), the activation (GELU with
erf), and, when residual, their input added back from the second hidden layer on. Weights
are He-normal (the values do not change the time), biases zero. bf16 and f16 run under
torch.autocast, which keeps instance norm in f32 as frugal does.

Prints one JSON line: the settings, params, time_mean_s and time_sd_s over the timed
rollouts (each from building the initial batch to the last recorded state on the host),
throughput (realization time steps per second), peak_device_bytes and
peak_device_reserved_bytes (torch.cuda.max_memory_allocated/max_memory_reserved; null on the
CPU), peak_rss_bytes, torch, gpu. Out of memory, it prints {"error": "out of memory", ...}
and exits 3.
"""

import argparse
import json
import math
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def build(args, device):
    g = torch.Generator().manual_seed(args.seed)
    layers = []
    n = max(args.layers, 1)
    for l in range(n):
        cin = args.fields if l == 0 else args.channels
        cout = args.fields if l + 1 == n else args.channels
        fan_in = cin * args.kernel * args.kernel
        w = torch.randn(cout, cin, args.kernel, args.kernel, generator=g) * math.sqrt(2.0 / fan_in)
        layers.append((w.to(device), torch.zeros(cout, device=device)))
    return layers


def apply(layers, x, args):
    pad = args.kernel // 2
    last = len(layers) - 1
    for l, (w, b) in enumerate(layers):
        inp = x
        if pad:
            x = F.pad(x, (pad, pad, pad, pad), mode="circular")
        x = F.conv2d(x, w, b)
        if l < last:
            if args.norm == "instance":
                x = F.instance_norm(x, eps=1e-5)
            if args.activation == "gelu":
                x = F.gelu(x)
            elif args.activation == "tanh":
                x = torch.tanh(x)
            else:
                x = F.relu(x)
            if args.residual and l > 0:
                x = x + inp
    return x


def rollout(layers, args, device):
    every = max(args.record_every, 1)
    recorded = args.steps // every + 1 + (1 if args.steps % every else 0)
    store = torch.float16 if args.storage == "f16" else torch.float32
    out = torch.empty(args.batch, recorded, args.fields, args.height, args.width, dtype=store)
    g = torch.Generator().manual_seed(args.seed + 1)
    state = torch.randn(args.batch, args.fields, args.height, args.width, generator=g).to(device)
    autocast = args.precision != "f32"
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float16
    k = 0
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=autocast):
        for t in range(args.steps + 1):
            if t % every == 0 or t == args.steps:
                out[:, k] = state.to("cpu", store)
                k += 1
            if t < args.steps:
                state = state + args.dt * apply(layers, state, args)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--kernel", type=int, default=3)
    p.add_argument("--norm", choices=["instance", "none"], default="instance")
    p.add_argument("--activation", choices=["gelu", "tanh", "relu"], default="gelu")
    p.add_argument("--residual", type=int, default=1)
    p.add_argument("--dt", type=float, default=0.05)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--fields", type=int, default=3)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--record-every", type=int, default=10)
    p.add_argument("--storage", choices=["f16", "f32"], default="f16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--precision", choices=["f32", "bf16", "f16"], default="f32")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    settings = {k: v for k, v in vars(args).items()}
    layers = build(args, device)
    params = sum(w.numel() + b.numel() for w, b in layers)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    try:
        for _ in range(args.warmup):
            rollout(layers, args, device)
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.repeats):
            began = time.perf_counter()
            rollout(layers, args, device)
            sync()
            times.append(time.perf_counter() - began)
    except torch.OutOfMemoryError:
        print(json.dumps({"error": "out of memory", **settings}))
        sys.exit(3)
    mean = statistics.mean(times)
    result = {
        **settings,
        "params": params,
        "time_mean_s": mean,
        "time_sd_s": statistics.stdev(times) if len(times) > 1 else 0.0,
        "throughput": args.batch * args.steps / mean,
        "peak_device_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
        "peak_device_reserved_bytes": torch.cuda.max_memory_reserved() if device.type == "cuda" else None,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
