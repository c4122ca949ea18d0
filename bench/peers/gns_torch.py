#!/usr/bin/env python3
"""The particle graph network of frugal-models (crates/frugal-models/src/particles.rs) in
PyTorch, as the GPU peer of `frugal nbody scale`: one training step (graph, forward,
backward, AdamW update) on a batch of Plummer spheres, timed.

    python bench/peers/gns_torch.py [--particles 5000] [--hidden 128] [--layers 3] [--k 20]
        [--batch 2] [--steps 20] [--warmup 3] [--precision f32|bf16] [--device cpu|cuda]
        [--seed 0] [--graph-once] [--concat] [--aggregate scatter|reshape]

The network is frugal's, layer for layer, so the parameter counts agree: node features
(velocity, position from the centre of mass, its distance, the monopole field: 10) and
edge features (sender − receiver displacement and its norm: 4) are encoded by MLPs
(Linear–ReLU–Linear–ReLU–Linear–LayerNorm) to `hidden`; each processor layer updates
every edge from [edge, sender, receiver], sums the messages into their receivers
(index_add_), updates every node from [node, incoming], both residually; a decoder MLP
without LayerNorm reads three numbers off every node; the loss is the MSE against
(normalised) targets. The edge MLP's first layer is split as frugal splits it (a Linear on
the edge latents plus bias-free Linears on the node latents, gathered by sender and by
receiver); --concat runs one Linear(3h, h) on the concatenation instead, the same function
and parameter count. Messages reach their receivers through index_add_ (a scatter-add);
--aggregate reshape uses the graph's layout instead (edges ordered by receiver, k each): a
broadcast to gather receivers, a reshape and a sum to add up their messages.

The graph is B disjoint k-nearest-neighbour graphs (no self loops, exactly k senders per
receiver, node indices offset by state), rebuilt every step on the device from the
positions, with the node and edge features, as frugal rebuilds its inputs every step (on
the CPU, where this peer uses the device); --graph-once builds them once and leaves them
out of the step. Values do not change the time: velocities come with the Plummer spheres
and targets are random.

Prints one JSON line: particles, hidden, layers, k, batch, precision, device, params,
edges, step_ms_median/mean/sd over the timed steps, graph_ms_median (the kNN search alone,
timed separately after the steps), peak_device_bytes and peak_device_reserved_bytes
(torch.cuda.max_memory_allocated and max_memory_reserved over the timed steps; null on the
CPU), peak_rss_bytes, torch, gpu. Out of memory, it prints
{"error": "out of memory", ...} and exits 3.
"""

import argparse
import json
import math
import resource
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn

NODE_FEATURES = 10
EDGE_FEATURES = 4
# The softening of the Plummer spheres `frugal nbody scale` trains on.
SOFTENING = 0.05
# Distances held at once by the kNN search: 2^25 f32 (128 MiB) plus topk's workspace, so
# 50,000 particles need no 10 GB distance matrix.
KNN_BLOCK_ELEMENTS = 1 << 25


def plummer(n, rng):
    """A Plummer sphere in Hénon units (Aarseth, Hénon & Wielen 1974), as frugal-sim draws
    it: positions and velocities, [n, 3] each, in the centre-of-mass frame."""
    length, speed = 3 * math.pi / 16, math.sqrt(16 / (3 * math.pi))
    r = 1 / np.sqrt(rng.uniform(0.0, 0.999, n) ** (-2 / 3) - 1)
    q = np.empty(n)
    todo = np.arange(n)
    while todo.size:
        qq, y = rng.uniform(0, 1, todo.size), rng.uniform(0, 0.1, todo.size)
        ok = y < qq * qq * (1 - qq * qq) ** 3.5
        q[todo[ok]] = qq[ok]
        todo = todo[~ok]
    v = q * math.sqrt(2) * (1 + r * r) ** -0.25

    def directions():
        d = rng.normal(size=(n, 3))
        return d / np.linalg.norm(d, axis=1, keepdims=True)

    pos = directions() * (r * length)[:, None]
    vel = directions() * (v * speed)[:, None]
    return pos - pos.mean(0), vel - vel.mean(0)


@torch.no_grad()
def knn(pos, k):
    """Senders of each particle's k nearest others, [n, k]: row i holds receiver i's."""
    n = pos.shape[0]
    rows = max(1, min(n, KNN_BLOCK_ELEMENTS // n))
    out = torch.empty(n, k, dtype=torch.int64, device=pos.device)
    for a in range(0, n, rows):
        b = min(n, a + rows)
        d = torch.cdist(pos[a:b], pos)
        # By index, not by distance: a particle sharing another's spot stays a neighbour.
        d[torch.arange(b - a, device=pos.device), torch.arange(a, b, device=pos.device)] = math.inf
        out[a:b] = d.topk(k, dim=1, largest=False, sorted=False).indices
    return out


@torch.no_grad()
def graph(pos, k):
    """B disjoint kNN graphs as senders and receivers into the flattened batch."""
    batch, n, _ = pos.shape
    senders, receivers = [], []
    for s in range(batch):
        nb = knn(pos[s], k)
        senders.append(nb.reshape(-1) + s * n)
        receivers.append(torch.arange(n, device=pos.device).repeat_interleave(k) + s * n)
    return torch.cat(senders), torch.cat(receivers)


@torch.no_grad()
def centred_and_field(pos):
    """Positions from the centre of mass and the monopole field there, −f r / (r² + ε²)^{3/2}
    with f the fraction of the other particles nearer the centre: [B, n, 3] each."""
    n = pos.shape[1]
    rel = pos - pos.mean(1, keepdim=True)
    r2 = (rel * rel).sum(2)
    rank = torch.empty_like(r2)
    order = r2.argsort(1)
    ranks = torch.arange(n, device=pos.device, dtype=r2.dtype).expand_as(r2)
    rank.scatter_(1, order, ranks)
    f = rank / max(1, n - 1)
    d2 = r2 + SOFTENING * SOFTENING
    return rel, (-f / (d2 * d2.sqrt())).unsqueeze(2) * rel


class Scales:
    """The normalisation frugal measures on its data, measured once on these states."""

    def __init__(self, pos, vel, senders, receivers):
        rel, field = centred_and_field(pos)
        flat = pos.reshape(-1, 3)
        n = pos.shape[1]
        first = senders < n
        self.vel = vel.std(correction=0).clamp_min(1e-12).item()
        self.edge = (flat[senders[first]] - flat[receivers[first]]).norm(dim=1).mean().clamp_min(1e-12).item()
        self.pos = rel.pow(2).mean().sqrt().clamp_min(1e-12).item() * math.sqrt(3)
        self.field = field.pow(2).mean().sqrt().clamp_min(1e-12).item()


@torch.no_grad()
def features(pos, vel, senders, receivers, scales):
    """Node features [B·n, 10] and edge features [B·n·k, 4], normalised like frugal's."""
    rel, field = centred_and_field(pos)
    dist = rel.norm(dim=2, keepdim=True)
    nodes = torch.cat(
        [vel / scales.vel, rel / scales.pos, dist / scales.pos, field / scales.field], 2
    ).reshape(-1, NODE_FEATURES)
    flat = pos.reshape(-1, 3)
    d = (flat[senders] - flat[receivers]) / scales.edge
    edges = torch.cat([d, d.norm(dim=1, keepdim=True)], 1)
    return nodes, edges


class Mlp(nn.Module):
    """Two hidden ReLU layers and an output layer, optionally layer-normalised; `extra` is
    added to the first layer's output (the rest of a split concatenated input)."""

    def __init__(self, inputs, hidden, outputs, norm):
        super().__init__()
        self.layers = nn.ModuleList(
            [nn.Linear(inputs, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, outputs)]
        )
        self.norm = nn.LayerNorm(outputs) if norm else None

    def forward(self, x, extra=None):
        x = self.layers[0](x)
        if extra is not None:
            x = x + extra
        x = self.layers[2](torch.relu(self.layers[1](torch.relu(x))))
        return self.norm(x) if self.norm is not None else x


class Interaction(nn.Module):
    def __init__(self, h, split, k, reshape):
        super().__init__()
        self.split, self.k, self.reshape = split, k, reshape
        self.edge = Mlp(h if split else 3 * h, h, h, True)
        if split:
            self.sender = nn.Linear(h, h, bias=False)
            self.receiver = nn.Linear(h, h, bias=False)
        self.node = Mlp(2 * h, h, h, True)

    def to_edges(self, x, receivers):
        """Rows of x (per node) for each edge's receiver."""
        if self.reshape:
            return x.unsqueeze(1).expand(-1, self.k, -1).reshape(-1, x.shape[1])
        return x.index_select(0, receivers)

    def forward(self, v, e, senders, receivers):
        if self.split:
            # Per node, then gathered: no edges × 3h concatenation, a third of the first
            # layer's work per edge.
            ends = self.sender(v).index_select(0, senders) + self.to_edges(self.receiver(v), receivers)
            m = self.edge(e, ends)
        else:
            m = self.edge(torch.cat([e, v.index_select(0, senders), self.to_edges(v, receivers)], 1))
        if self.reshape:
            incoming = m.view(-1, self.k, m.shape[1]).sum(1)
        else:
            incoming = torch.zeros(v.shape[0], m.shape[1], dtype=m.dtype, device=m.device)
            incoming.index_add_(0, receivers, m)
        # Under autocast the LayerNorm outputs (the residual streams) stay f32 and the
        # Linears' bf16: cat needs one dtype.
        v = v + self.node(torch.cat([v, incoming.to(v.dtype)], 1))
        return v, e + m


class Gnn(nn.Module):
    def __init__(self, hidden, layers, split, k, reshape):
        super().__init__()
        self.encode_node = Mlp(NODE_FEATURES, hidden, hidden, True)
        self.encode_edge = Mlp(EDGE_FEATURES, hidden, hidden, True)
        self.layers = nn.ModuleList([Interaction(hidden, split, k, reshape) for _ in range(layers)])
        self.decoder = Mlp(hidden, hidden, 3, False)

    def forward(self, nodes, edges, senders, receivers):
        v, e = self.encode_node(nodes), self.encode_edge(edges)
        for layer in self.layers:
            v, e = layer(v, e, senders, receivers)
        return self.decoder(v)


def frugal_params(h, layers):
    """The parameter count of frugal's network (particles.rs: `ParticleGnn::init`)."""
    return 6 * h * h + 29 * h + 3 + layers * (9 * h * h + 10 * h)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--particles", type=int, default=5000)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--graph-once", action="store_true",
                    help="build the graph and features once, outside the timed step")
    ap.add_argument("--concat", dest="split", action="store_false",
                    help="one Linear(3h, h) on [edge, sender, receiver] instead of frugal's split")
    ap.add_argument("--aggregate", choices=["scatter", "reshape"], default="scatter",
                    help="messages summed into receivers by index_add_, or (edges being ordered by "
                         "receiver, k each) by a reshape and a sum, receivers gathered by broadcast")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: PyTorch sees no CUDA device")
    if not 1 <= args.k < args.particles:
        raise SystemExit(f"--k must be at least 1 and below --particles ({args.particles})")
    if args.steps < 1:
        raise SystemExit("--steps must be at least 1")
    cuda = args.device == "cuda"
    device = torch.device(args.device)
    torch.manual_seed(args.seed)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    report = {
        "peer": "gns_torch",
        "particles": args.particles,
        "hidden": args.hidden,
        "layers": args.layers,
        "k": args.k,
        "batch": args.batch,
        "precision": args.precision,
        "device": args.device,
        "split": args.split,
        "graph_once": args.graph_once,
        "aggregate": args.aggregate,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if cuda else None,
    }
    try:
        states = [plummer(args.particles, np.random.default_rng(args.seed + s)) for s in range(args.batch)]
        pos = torch.tensor(np.stack([p for p, _ in states]), dtype=torch.float32, device=device)
        vel = torch.tensor(np.stack([v for _, v in states]), dtype=torch.float32, device=device)
        targets = torch.randn(args.batch * args.particles, 3, device=device)
        senders, receivers = graph(pos, args.k)
        scales = Scales(pos, vel, senders, receivers)
        fixed = (*features(pos, vel, senders, receivers, scales), senders, receivers) if args.graph_once else None
        del senders, receivers

        model = Gnn(args.hidden, args.layers, args.split, args.k, args.aggregate == "reshape").to(device)
        params = sum(p.numel() for p in model.parameters())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4)
        autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.precision == "bf16")

        def step():
            if fixed is None:
                s, r = graph(pos, args.k)
                inputs = (*features(pos, vel, s, r, scales), s, r)
            else:
                inputs = fixed
            opt.zero_grad(set_to_none=True)
            with autocast:
                pred = model(*inputs)
            loss = torch.nn.functional.mse_loss(pred.float(), targets)
            loss.backward()
            opt.step()

        for _ in range(args.warmup):
            step()
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.steps):
            sync()
            began = time.perf_counter()
            step()
            sync()
            times.append((time.perf_counter() - began) * 1e3)
        peak = torch.cuda.max_memory_allocated() if cuda else None
        reserved = torch.cuda.max_memory_reserved() if cuda else None
        knn_times = []
        for _ in range(args.steps):
            sync()
            began = time.perf_counter()
            graph(pos, args.k)
            sync()
            knn_times.append((time.perf_counter() - began) * 1e3)
    except getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError):
        report.update(error="out of memory")
        if cuda:
            report.update(peak_device_bytes=torch.cuda.max_memory_allocated())
        print(json.dumps(report))
        sys.exit(3)
    except RuntimeError as e:
        # The CPU allocator's failure is a plain RuntimeError.
        if "can't allocate memory" not in str(e) and "out of memory" not in str(e):
            raise
        report.update(error="out of memory", detail=str(e).splitlines()[0])
        print(json.dumps(report))
        sys.exit(3)

    report.update(
        params=params,
        frugal_params=frugal_params(args.hidden, args.layers),
        edges=args.batch * args.particles * args.k,
        steps=args.steps,
        warmup=args.warmup,
        step_ms_median=statistics.median(times),
        step_ms_mean=statistics.fmean(times),
        step_ms_sd=statistics.stdev(times) if len(times) > 1 else 0.0,
        graph_ms_median=statistics.median(knn_times),
        peak_device_bytes=peak,
        peak_device_reserved_bytes=reserved,
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
