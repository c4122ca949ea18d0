"""REBOUND's leapfrog on a Plummer sphere, timed per step, as the peer of frugal-sim's
`pair_rate` example: the same softening (0.01), step (1e-4), method ("basic" is direct
summation, "tree" Barnes-Hut with opening_angle2 = theta^2) and particle counts, and the
same sampling of the Plummer sphere (Aarseth, Henon and Wielen 1974, Henon units).

    python bench/peers/nbody_rebound.py direct 1000,5000 [THETA]

One JSON object per line, pairs_per_s = N(N-1) / seconds per step.
"""

import json
import math
import sys
import time

import numpy as np
import rebound


def plummer(n, seed):
    rng = np.random.default_rng(seed)
    length, speed = 3 * math.pi / 16, math.sqrt(16 / (3 * math.pi))
    x = rng.uniform(0, 0.999, n)
    r = 1 / np.sqrt(x ** (-2 / 3) - 1)
    q = np.empty(n)
    filled = 0
    while filled < n:
        a, y = rng.uniform(0, 1, 2 * n), rng.uniform(0, 0.1, 2 * n)
        keep = a[y < a * a * (1 - a * a) ** 3.5][: n - filled]
        q[filled : filled + len(keep)] = keep
        filled += len(keep)
    v = q * math.sqrt(2) * (1 + r * r) ** -0.25

    def directions():
        z = rng.uniform(-1, 1, n)
        phi = rng.uniform(0, 2 * math.pi, n)
        s = np.sqrt(1 - z * z)
        return np.stack([s * np.cos(phi), s * np.sin(phi), z], axis=1)

    pos = directions() * (r * length)[:, None]
    vel = directions() * (v * speed)[:, None]
    pos -= pos.mean(axis=0)
    vel -= vel.mean(axis=0)
    return pos, vel


def seconds_per_step(sim):
    sim.steps(1)
    times = []
    began = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - began < 1.0:
        start = time.perf_counter()
        sim.steps(1)
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def main():
    method = sys.argv[1] if len(sys.argv) > 1 else "direct"
    sizes = [int(n) for n in (sys.argv[2] if len(sys.argv) > 2 else "1000,5000,10000").split(",")]
    theta = float(sys.argv[3]) if len(sys.argv) > 3 else 0.5
    for n in sizes:
        pos, vel = plummer(n, 1)
        sim = rebound.Simulation()
        sim.G = 1.0
        sim.softening = 0.01
        sim.integrator = "leapfrog"
        sim.dt = 1e-4
        if method == "tree":
            sim.root_size = 2.02 * float(np.abs(pos).max())
            sim.N_root_x = sim.N_root_y = sim.N_root_z = 1
            sim.boundary = "open"
            sim.opening_angle2 = theta * theta
            sim.gravity = "tree"
        else:
            sim.gravity = "basic"
        for p, v in zip(pos, vel):
            sim.add(m=1.0 / n, x=p[0], y=p[1], z=p[2], vx=v[0], vy=v[1], vz=v[2])
        seconds = seconds_per_step(sim)
        print(
            json.dumps(
                {
                    "engine": f"rebound {rebound.__version__}",
                    "method": method,
                    "theta": theta,
                    "n": n,
                    "threads": 1,
                    "seconds_per_step": seconds,
                    "pairs_per_s": n * (n - 1) / seconds,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
