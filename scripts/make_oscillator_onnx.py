#!/usr/bin/env python3
"""Builds models/oscillator.onnx, the network the `onnx` job kind evaluates in tests.

The network is a surrogate for a damped harmonic oscillator

    x'' + 2 zeta omega x' + omega^2 x = 0,    x(0) = 1,  x'(0) = 0,

released from rest at unit displacement (x is a fraction of the initial displacement,
t is in seconds). It maps the oscillator's parameters to three numbers a tuner scores.

Input, float32 [N, 2], N any batch size; the network is valid only inside these ranges:
    zeta       damping ratio, 0.1 to 1.5 (light damping through over-damped)
    omega      natural frequency in rad/s, 0.5 to 5

Output, float32 [N, 3]:
    overshoot    how far x swings past equilibrium, |min x|, as a fraction of the
                 initial displacement: exp(-pi zeta / sqrt(1 - zeta^2)) below critical
                 damping, 0 at and above it
    ise          integral of x^2 over all t >= 0, in seconds: (1 + 4 zeta^2) / (4 zeta omega)
    energy_left  mechanical energy at t = 1 s as a fraction of the initial energy,
                 x(1)^2 + x'(1)^2 / omega^2, from the closed-form solution

The graph is Log -> Gemm -> Tanh -> Gemm -> Tanh -> Gemm (32 units a layer). zeta and
omega are scale parameters: ise goes as 1/(zeta omega), so the network sees their logarithms,
which makes the steep low-damping, low-frequency corner as easy to fit as the rest; the
input and output normalisations are folded into the first and last Gemm. The closed forms
are first checked against a Runge-Kutta integration of the equation of motion; the weights
are then fitted to them with full-batch Adam from a fixed seed, so the file is the same on
every run on the same numpy.

The model's metadata_props carry the column names (input_names, output_names, comma
separated), the valid input ranges (input_min, input_max) and the fit error measured on
the ONNX graph itself over two dense grids of the input box (fit_max_abs_error,
fit_rms_error, one value per output, the maximum rounded up).

Usage: python3 scripts/make_oscillator_onnx.py [OUTPUT]   (default models/oscillator.onnx)
"""

import math
import os
import sys
from pathlib import Path

# The matrices are small, so one BLAS thread is as fast as several; it also fixes the
# order of every sum, and idle BLAS threads spinning on a busy machine slow a run many times over.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402  (after the thread settings, which numpy reads on import)
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

ZETA = (0.1, 1.5)
OMEGA = (0.5, 5.0)
T_ENERGY = 1.0
INPUT_NAMES = ["zeta", "omega"]
OUTPUT_NAMES = ["overshoot", "ise", "energy_left"]
HIDDEN = 32
STEPS = 8000
SEED = 20240611


def state(zeta, omega, t):
    """x(t) and x'(t) for x(0) = 1, x'(0) = 0.

    One formula covers every damping: with wd^2 = omega^2 (1 - zeta^2), cos(wd t) and
    sin(wd t)/wd become cosh and sinh/wd once wd^2 < 0, and tend to 1 and t at wd = 0.
    """
    d = 1.0 - zeta * zeta
    wd = omega * np.sqrt(np.abs(d))
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(d > 0, np.cos(wd * t), np.cosh(wd * t))
        s = np.where(d > 0, np.sin(wd * t) / wd, np.sinh(wd * t) / wd)
    tiny = wd * t < 1e-8
    c = np.where(tiny, 1.0, c)
    s = np.where(tiny, t, s)
    decay = np.exp(-zeta * omega * t)
    return decay * (c + zeta * omega * s), -decay * omega * omega * s


def metrics(zeta, omega):
    """The three outputs, closed form, as float64 [N, 3]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        overshoot = np.where(
            zeta < 1.0,
            np.exp(-np.pi * zeta / np.sqrt(np.clip(1.0 - zeta * zeta, 1e-300, None))),
            0.0,
        )
    ise = (1.0 + 4.0 * zeta * zeta) / (4.0 * zeta * omega)
    x, v = state(zeta, omega, T_ENERGY)
    energy_left = x * x + v * v / (omega * omega)
    return np.stack([overshoot, ise, energy_left], axis=1)


def check_closed_forms():
    """Integrates the equation of motion with RK4 at a few points and compares.

    The fit is only as right as the formulas it fits, so they are checked against the ODE
    itself before any fitting: under-damped, critical and over-damped points.
    """
    zeta = np.array([0.1, 0.2, 0.7, 1.0, 1.3])
    omega = np.array([0.5, 1.0, 3.0, 2.0, 0.7])
    dt, t_end = 5e-3, 400.0  # by t_end the slowest point has decayed by e^-20

    def accel(x, v):
        return -2.0 * zeta * omega * v - omega * omega * x

    x, v = np.ones_like(zeta), np.zeros_like(zeta)
    lowest, ise, energy_left = x.copy(), np.zeros_like(zeta), None
    for step in range(1, int(round(t_end / dt)) + 1):
        k1x, k1v = v, accel(x, v)
        k2x, k2v = v + dt / 2 * k1v, accel(x + dt / 2 * k1x, v + dt / 2 * k1v)
        k3x, k3v = v + dt / 2 * k2v, accel(x + dt / 2 * k2x, v + dt / 2 * k2v)
        k4x, k4v = v + dt * k3v, accel(x + dt * k3x, v + dt * k3v)
        x_new = x + dt / 6 * (k1x + 2 * k2x + 2 * k3x + k4x)
        v = v + dt / 6 * (k1v + 2 * k2v + 2 * k3v + k4v)
        ise += dt * (x * x + x_new * x_new) / 2
        x = x_new
        lowest = np.minimum(lowest, x)
        if step == int(round(T_ENERGY / dt)):
            energy_left = x * x + v * v / (omega * omega)
    numeric = np.stack([np.maximum(-lowest, 0.0), ise, energy_left], axis=1)
    err = np.abs(numeric - metrics(zeta, omega))
    # The overshoot is a minimum over samples dt apart, the integral a trapezoid sum.
    tol = np.array([1e-5, 1e-8, 1e-9])
    assert (err < tol).all(), f"closed forms disagree with the ODE: {err}"
    return err.max(axis=0)


def log_normalisation():
    """Centre and half-width of log(zeta), log(omega) over the valid box."""
    lo = np.log([ZETA[0], OMEGA[0]])
    hi = np.log([ZETA[1], OMEGA[1]])
    return (lo + hi) / 2, (hi - lo) / 2


def training_set(rng):
    # A grid even in the raw parameters holds the box's edges; points drawn evenly in the
    # logarithms fill the low-damping, low-frequency corner where the outputs bend most.
    g = np.meshgrid(np.linspace(*ZETA, 64), np.linspace(*OMEGA, 64))
    zeta = np.concatenate([g[0].ravel(), np.exp(rng.uniform(*np.log(ZETA), 4096))])
    omega = np.concatenate([g[1].ravel(), np.exp(rng.uniform(*np.log(OMEGA), 4096))])
    return zeta, omega


def fit(rng):
    """Weights of the normalised network: tanh(tanh(u W1 + b1) W2 + b2) W3 + b3 -> (y - mu) / sd."""
    zeta, omega = training_set(rng)
    centre, half = log_normalisation()
    u = (np.log(np.stack([zeta, omega], axis=1)) - centre) / half
    y = metrics(zeta, omega)
    mu, sd = y.mean(axis=0), y.std(axis=0)
    yn = (y - mu) / sd

    params = [
        rng.normal(0.0, 1.5, (2, HIDDEN)),
        rng.normal(0.0, 1.0, HIDDEN),
        rng.normal(0.0, 1.0 / math.sqrt(HIDDEN), (HIDDEN, HIDDEN)),
        np.zeros(HIDDEN),
        np.zeros((HIDDEN, 3)),
        np.zeros(3),
    ]
    # Starting the output layer at its least-squares optimum for the random hidden
    # features lets Adam spend its steps on the features rather than on the scale.
    h2 = np.tanh(np.tanh(u @ params[0] + params[1]) @ params[2] + params[3])
    a = np.hstack([h2, np.ones((len(u), 1))])
    sol = np.linalg.lstsq(a, yn, rcond=None)[0]
    params[4][:] = sol[:-1]
    params[5][:] = sol[-1]

    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    beta1, beta2, lr0 = 0.9, 0.999, 3e-3
    n = len(u)
    for step in range(1, STEPS + 1):
        w1, b1, w2, b2, w3, b3 = params
        h1 = np.tanh(u @ w1 + b1)
        h2 = np.tanh(h1 @ w2 + b2)
        g = 2.0 * (h2 @ w3 + b3 - yn) / n
        g2 = (g @ w3.T) * (1.0 - h2 * h2)
        g1 = (g2 @ w2.T) * (1.0 - h1 * h1)
        grads = [u.T @ g1, g1.sum(0), h1.T @ g2, g2.sum(0), h2.T @ g, g.sum(0)]
        lr = lr0 * 0.5 * (1.0 + math.cos(math.pi * step / STEPS)) + 1e-5
        for p, gr, mm, vv in zip(params, grads, m, v):
            mm *= beta1
            mm += (1.0 - beta1) * gr
            vv *= beta2
            vv += (1.0 - beta2) * gr * gr
            p -= lr * (mm / (1.0 - beta1**step)) / (np.sqrt(vv / (1.0 - beta2**step)) + 1e-8)
    return params, mu, sd


def build_model(params, mu, sd):
    w1, b1, w2, b2, w3, b3 = params
    centre, half = log_normalisation()
    # ((log p - centre) / half) W1 + b1 = log p (W1 / half) + (b1 - (centre / half) W1)
    w1f = w1 / half[:, None]
    b1f = b1 - (centre / half) @ w1
    # (h W3 + b3) sd + mu = h (W3 sd) + (b3 sd + mu)
    w3f = w3 * sd
    b3f = b3 * sd + mu
    weights = {"w1": w1f, "b1": b1f, "w2": w2, "b2": b2, "w3": w3f, "b3": b3f}
    inits = [numpy_helper.from_array(a.astype(np.float32), k) for k, a in weights.items()]
    nodes = [
        helper.make_node("Log", ["params"], ["log_params"]),
        helper.make_node("Gemm", ["log_params", "w1", "b1"], ["z1"]),
        helper.make_node("Tanh", ["z1"], ["h1"]),
        helper.make_node("Gemm", ["h1", "w2", "b2"], ["z2"]),
        helper.make_node("Tanh", ["z2"], ["h2"]),
        helper.make_node("Gemm", ["h2", "w3", "b3"], ["metrics"]),
    ]
    graph = helper.make_graph(
        nodes,
        "oscillator",
        [helper.make_tensor_value_info("params", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("metrics", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 13)],
        producer_name="frugal",
        doc_string="Damped harmonic oscillator x'' + 2 zeta omega x' + omega^2 x = 0 "
        "released from rest at x = 1: (zeta, omega rad/s) -> "
        "(overshoot, ise s, energy_left at t = 1 s).",
    )
    # onnx 1.2x writes a newer IR than ONNX Runtime 1.31 reads; 8 carries all we use.
    model.ir_version = 8
    return model


def round_up(x, digits=2):
    """x rounded up to `digits` significant figures, so the written bound stays a bound."""
    if x <= 0:
        return 0.0
    scale = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    return math.ceil(x / scale) * scale


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent.parent / "models" / "oscillator.onnx"
    ode_err = check_closed_forms()
    print(
        "closed forms agree with an RK4 integration of the ODE to "
        + ", ".join(f"{n} {e:.1g}" for n, e in zip(OUTPUT_NAMES, ode_err))
    )
    rng = np.random.default_rng(SEED)
    params, mu, sd = fit(rng)
    model = build_model(params, mu, sd)

    # The error is measured on the ONNX graph, in float32, so it is the error of the file.
    even = np.meshgrid(np.linspace(*ZETA, 201), np.linspace(*OMEGA, 201))
    logs = np.meshgrid(np.geomspace(*ZETA, 201), np.geomspace(*OMEGA, 201))
    zeta = np.concatenate([even[0].ravel(), logs[0].ravel()])
    omega = np.concatenate([even[1].ravel(), logs[1].ravel()])
    x = np.stack([zeta, omega], axis=1).astype(np.float32)
    (pred,) = ReferenceEvaluator(model).run(None, {"params": x})
    err = np.abs(pred.astype(np.float64) - metrics(zeta.astype(np.float64), omega.astype(np.float64)))
    max_err = [round_up(float(e)) for e in err.max(axis=0)]
    rms_err = [float(f"{e:.2g}") for e in np.sqrt((err**2).mean(axis=0))]

    props = {
        "input_names": ",".join(INPUT_NAMES),
        "output_names": ",".join(OUTPUT_NAMES),
        "input_min": f"{ZETA[0]},{OMEGA[0]}",
        "input_max": f"{ZETA[1]},{OMEGA[1]}",
        "fit_max_abs_error": ",".join(repr(e) for e in max_err),
        "fit_rms_error": ",".join(repr(e) for e in rms_err),
    }
    helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, out)

    print(f"wrote {out} ({out.stat().st_size} bytes)")
    print(f"fit over {len(x)} grid points in zeta {ZETA}, omega {OMEGA} rad/s:")
    for k, name in enumerate(OUTPUT_NAMES):
        span = np.ptp(metrics(zeta, omega)[:, k])
        print(
            f"  {name:12s} max |err| {max_err[k]:.2g}  rms {rms_err[k]:.2g}"
            f"  (output spans {span:.3g}; max is {100 * max_err[k] / span:.2g} % of it)"
        )


if __name__ == "__main__":
    main()
