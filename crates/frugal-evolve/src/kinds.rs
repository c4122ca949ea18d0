//! Built-in job kinds for evolution: the standard test problems and a headless particle
//! benchmark, registered on every worker.

use std::time::Instant;

use frugal_farm::{Context, Job, JobError, Kind, Metrics, Registry, RegistryError};
use frugal_sim::{Gravity, Initial, Method, Simulation};

use crate::problems;

/// Registers `sphere`, `rastrigin`, `zdt1` (parameter `x`: an array of numbers; metrics
/// `f`, or `f1` and `f2`) and `particles` (see [`ParticleBenchmark`]).
pub fn register(registry: &mut Registry) -> Result<(), RegistryError> {
    registry.register(
        "sphere",
        |job: &Job, _: &Context| -> Result<Metrics, JobError> {
            Ok(Metrics::from([(
                "f".to_string(),
                problems::sphere(&vector(job)?),
            )]))
        },
    )?;
    registry.register(
        "rastrigin",
        |job: &Job, _: &Context| -> Result<Metrics, JobError> {
            Ok(Metrics::from([(
                "f".to_string(),
                problems::rastrigin(&vector(job)?),
            )]))
        },
    )?;
    registry.register(
        "zdt1",
        |job: &Job, _: &Context| -> Result<Metrics, JobError> {
            let x = vector(job)?;
            if x.len() < 2 || x.iter().any(|v| !(0.0..=1.0).contains(v)) {
                return Err(format!(
                    "job {}: zdt1 takes at least 2 values of x, each in [0, 1]",
                    job.id
                )
                .into());
            }
            let [f1, f2] = problems::zdt1(&x);
            Ok(Metrics::from([
                ("f1".to_string(), f1),
                ("f2".to_string(), f2),
            ]))
        },
    )?;
    registry.register("particles", ParticleBenchmark)?;
    Ok(())
}

fn vector(job: &Job) -> Result<Vec<f64>, String> {
    job.params
        .get("x")
        .and_then(serde_json::Value::as_array)
        .and_then(|a| {
            a.iter()
                .map(serde_json::Value::as_f64)
                .collect::<Option<Vec<f64>>>()
        })
        .filter(|x| !x.is_empty() && x.iter().all(|v| v.is_finite()))
        .ok_or_else(|| {
            format!(
                "job {} ({}): parameter \"x\" must be a non-empty array of numbers",
                job.id, job.kind
            )
        })
}

/// A headless particle benchmark on the CPU: the physics parameters a tuner searches,
/// scored the way a game or visualisation engine's benchmark scores them.
///
/// A Plummer sphere of `particles` (default 128) bodies, drawn from the job's seed, is
/// integrated to time `time` (default 1) with the candidate's timestep `dt` and softening
/// `softening` (and Barnes–Hut opening angle `theta`, if given; else direct summation). A
/// reference run of the same bodies — direct summation, `reference_dt` 0.001, softening
/// `reference_softening` 0.01 — stands for the true physics. Metrics:
///
/// - `energy_drift`: |ΔE/E| of the candidate's own run; `stability` = 1 / (1 + drift / 10⁻³).
/// - `position_error`: RMS distance from the reference positions at the end, over the RMS
///   radius; `accuracy` = 1 / (1 + error / 0.05).
/// - `performance` = dt / (dt + 0.01): simulated time per step, the engine's frame budget
///   being fixed per step. Deterministic, unlike a wall clock, so a run's results do not
///   depend on how loaded its workers are; `seconds` reports the wall time beside it.
///
/// Small steps and the reference softening are accurate and stable but slow; large steps
/// are fast but drift, and more so with little softening — a trade-off with an optimum.
#[derive(Debug, Clone, Copy)]
pub struct ParticleBenchmark;

fn number(job: &Job, name: &str, default: Option<f64>) -> Result<f64, JobError> {
    match job.params.get(name) {
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| format!("job {}: parameter {name:?} must be a number", job.id).into()),
        None => default.ok_or_else(|| {
            format!(
                "job {}: the particle benchmark needs parameter {name:?}",
                job.id
            )
            .into()
        }),
    }
}

impl Kind for ParticleBenchmark {
    fn run(&self, job: &Job, ctx: &Context) -> Result<Metrics, JobError> {
        let start = Instant::now();
        let n = number(job, "particles", Some(128.0))?;
        let time = number(job, "time", Some(1.0))?;
        let dt = number(job, "dt", None)?;
        let softening = number(job, "softening", None)?;
        let reference_dt = number(job, "reference_dt", Some(1e-3))?;
        let reference_softening = number(job, "reference_softening", Some(0.01))?;
        let theta = job
            .params
            .get("theta")
            .map(|_| number(job, "theta", None))
            .transpose()?;
        let bad = |what: &str| Err(format!("job {}: {what}", job.id).into());
        if !((2.0..=100_000.0).contains(&n) && n.fract() == 0.0) {
            return bad("particles must be a whole number in [2, 100000]");
        }
        if !(time > 0.0 && dt > 0.0 && dt <= time && reference_dt > 0.0 && reference_dt <= time) {
            return bad(
                "time, dt and reference_dt must be positive, the steps no longer than time",
            );
        }
        if !(softening > 0.0 && reference_softening > 0.0) {
            return bad("softening and reference_softening must be positive");
        }
        if theta.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            return bad("theta must be in [0, 2]");
        }
        let reference_gravity = Gravity::softened(reference_softening);
        let initial = Initial::Plummer
            .generate(n as usize, job.seed, reference_gravity)
            .map_err(|e| e.0)?;
        let method = theta.map_or(Method::Direct, |theta| Method::BarnesHut { theta });

        let run = |gravity: Gravity, method: Method, dt: f64| -> Result<Simulation, JobError> {
            let steps = (time / dt).ceil() as u64;
            let dt = time / steps as f64;
            let mut sim = Simulation::new(initial.clone(), gravity, method, false);
            for i in 0..steps {
                if i % 16 == 0 {
                    ctx.check()?;
                }
                sim.step(dt);
            }
            Ok(sim)
        };
        let e0 = Simulation::new(initial.clone(), Gravity::softened(softening), method, false)
            .energies()
            .total;
        let candidate = run(Gravity::softened(softening), method, dt)?;
        let drift = ((candidate.energies().total - e0) / e0).abs();
        let reference = run(reference_gravity, Method::Direct, reference_dt)?;

        let (mut err2, mut r2) = (0.0, 0.0);
        let (a, b) = (&candidate.particles, &reference.particles);
        for i in 0..a.len() {
            let (p, q) = (a.position(i), b.position(i));
            err2 += (0..3).map(|k| (p[k] - q[k]).powi(2)).sum::<f64>();
            r2 += (0..3).map(|k| q[k].powi(2)).sum::<f64>();
        }
        let position_error = (err2 / r2).sqrt();
        let steps = (time / dt).ceil();
        let dt_used = time / steps;
        let drift = if drift.is_finite() { drift } else { f64::MAX };
        let position_error = if position_error.is_finite() {
            position_error
        } else {
            f64::MAX
        };
        Ok(Metrics::from([
            ("energy_drift".to_string(), drift),
            ("position_error".to_string(), position_error),
            ("stability".to_string(), 1.0 / (1.0 + drift / 1e-3)),
            ("accuracy".to_string(), 1.0 / (1.0 + position_error / 0.05)),
            ("performance".to_string(), dt_used / (dt_used + 0.01)),
            ("steps".to_string(), steps),
            ("seconds".to_string(), start.elapsed().as_secs_f64()),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(kind: &str, params: serde_json::Value) -> Result<Metrics, JobError> {
        let mut r = Registry::new();
        register(&mut r).unwrap();
        r.run(&Job::new("t", kind, params, 3), &Context::unbounded())
    }

    #[test]
    fn test_problems_read_x() {
        assert_eq!(run("sphere", json!({"x": [1.0, 2.0]})).unwrap()["f"], 5.0);
        assert_eq!(
            run("rastrigin", json!({"x": [0.0, 0.0]})).unwrap()["f"],
            0.0
        );
        let z = run("zdt1", json!({"x": [0.25, 0.0, 0.0]})).unwrap();
        assert_eq!((z["f1"], z["f2"]), (0.25, 0.5));
        assert!(
            run("sphere", json!({"y": 1}))
                .unwrap_err()
                .to_string()
                .contains("\"x\"")
        );
        assert!(run("zdt1", json!({"x": [2.0, 0.0]})).is_err());
    }

    #[test]
    fn particle_benchmark_trades_speed_for_accuracy() {
        let p = |dt: f64, softening: f64| {
            run(
                "particles",
                json!({"particles": 64, "time": 0.5, "dt": dt, "softening": softening}),
            )
            .unwrap()
        };
        let fine = p(0.002, 0.01);
        let coarse = p(0.05, 0.01);
        assert!(fine["accuracy"] > coarse["accuracy"], "{fine:?} {coarse:?}");
        assert!(
            fine["stability"] > coarse["stability"],
            "{fine:?} {coarse:?}"
        );
        assert!(fine["performance"] < coarse["performance"]);
        assert!(fine["position_error"] < 0.05, "{fine:?}");
        // Deterministic: the same job gives the same metrics.
        let again = p(0.002, 0.01);
        assert_eq!(fine["position_error"], again["position_error"]);
        let e = run("particles", json!({"dt": 0.01})).unwrap_err();
        assert!(e.to_string().contains("softening"), "{e}");
    }
}
