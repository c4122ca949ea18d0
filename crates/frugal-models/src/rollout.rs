//! How well a trained particle network stands in for the simulator: rollouts from
//! held-out simulations' states, integrated with the simulator's own leapfrog, scored
//! against the recorded states and a constant-velocity baseline.

use burn::tensor::Device;
use frugal_sim::{Gravity, Particles, leapfrog, potential_energy};
use frugal_train::{Result, TrainError};
use serde::Serialize;

use crate::particles::{Gnn, ParticleGnn};
use crate::simulations::Recorded;

/// What a rollout integrates: the recorded interval and how far to go.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RolloutSettings {
    /// Recorded steps to roll out (clamped to what the simulations hold).
    pub steps: usize,
    /// The simulator's time step.
    pub dt: f64,
    /// Leapfrog steps between recorded states.
    pub substeps: u64,
    /// The simulator's gravitational softening (for energies).
    pub softening: f64,
}

/// Scores of a rollout on the held-out simulations (means over them).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutReport {
    /// Simulations rolled out.
    pub held_out_simulations: usize,
    /// Recorded steps rolled out.
    pub rollout_steps: usize,
    /// Position MSE after one recorded step from simulator states, learned and baseline.
    pub one_step_mse: f64,
    /// The constant-velocity baseline's.
    pub baseline_one_step_mse: f64,
    /// Position MSE at the last rollout step (the 20th by default).
    pub rollout_mse_20: f64,
    /// The constant-velocity baseline's.
    pub baseline_rollout_mse_20: f64,
    /// |ΔE/E| over the rollout: the learned one's.
    pub energy_drift: f64,
    /// The constant-velocity one's.
    pub baseline_energy_drift: f64,
    /// The simulator's own, over the same recorded steps.
    pub simulator_energy_drift: f64,
    /// Position MSE at every rollout step.
    pub rollout_mse: Vec<f64>,
    /// The constant-velocity baseline's.
    pub baseline_rollout_mse: Vec<f64>,
}

/// Mean squared difference.
fn mse(a: &[f64], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - f64::from(*y)).powi(2))
        .sum::<f64>()
        / a.len().max(1) as f64
}

/// Total energy of one state given particle-major positions and velocities, masses 1/N.
fn energy(x: &[f64], v: &[f64], gravity: Gravity) -> f64 {
    let n = x.len() / 3;
    let mut p = Particles::with_capacity(n);
    for i in 0..n {
        p.push(
            [x[3 * i], x[3 * i + 1], x[3 * i + 2]],
            [v[3 * i], v[3 * i + 1], v[3 * i + 2]],
            1.0 / n as f64,
        );
    }
    p.kinetic_energy() + potential_energy(&p, gravity, true)
}

fn wide(s: &[f32]) -> Vec<f64> {
    s.iter().map(|&e| f64::from(e)).collect()
}

/// Rolls `model` out from the first state of every `held` simulation (all at once) for
/// `settings.steps` recorded steps, and from up to 10 states of each for one step;
/// `progress` is called after each rollout step.
pub fn rollout(
    task: &ParticleGnn,
    model: &Gnn,
    device: &Device,
    held: &[Recorded],
    settings: RolloutSettings,
    progress: &dyn Fn(),
) -> Result<RolloutReport> {
    let per = task.particles * 3;
    let RolloutSettings {
        dt,
        substeps,
        softening,
        ..
    } = settings;
    let interval = dt * substeps as f64;
    let gravity = Gravity::softened(softening);
    let recorded = held.iter().map(|r| r.pos.len() / per).min().unwrap_or(0);
    if recorded < 2 {
        return Err(TrainError::Failed(format!(
            "the {} held-out simulations need 2 recorded states each or more; the shortest has {recorded}",
            held.len()
        )));
    }
    let steps = settings.steps.clamp(1, recorded - 1);
    let learned = |x: &[f64], v: &[f64]| -> Result<Vec<f64>> {
        let narrow = |s: &[f64]| s.iter().map(|&e| e as f32).collect::<Vec<f32>>();
        let a = task.accelerations(model, &narrow(x), &narrow(v), device)?;
        Ok(wide(&a))
    };

    let mut x: Vec<f64> = held.iter().flat_map(|r| wide(&r.pos[..per])).collect();
    let mut v: Vec<f64> = held.iter().flat_map(|r| wide(&r.vel[..per])).collect();
    let (x0, v0) = (x.clone(), v.clone());
    let (mut learned_mse, mut baseline_mse) = (Vec::new(), Vec::new());
    for r in 1..=steps {
        leapfrog(&mut x, &mut v, dt, substeps, learned)?;
        let truth: Vec<f32> = held
            .iter()
            .flat_map(|h| h.pos[r * per..(r + 1) * per].iter().copied())
            .collect();
        let t = r as f64 * interval;
        let straight: Vec<f64> = x0.iter().zip(&v0).map(|(x, v)| x + v * t).collect();
        learned_mse.push(mse(&x, &truth));
        baseline_mse.push(mse(&straight, &truth));
        progress();
    }

    let (mut drift, mut baseline_drift, mut simulator_drift) = (0.0, 0.0, 0.0);
    let t = steps as f64 * interval;
    let n = held.len() as f64;
    for (h, r) in held.iter().enumerate() {
        let part = h * per..(h + 1) * per;
        let e0 = energy(&wide(&r.pos[..per]), &wide(&r.vel[..per]), gravity);
        let rel = |e: f64| ((e - e0) / e0).abs() / n;
        drift += rel(energy(&x[part.clone()], &v[part.clone()], gravity));
        let straight: Vec<f64> = x0[part.clone()]
            .iter()
            .zip(&v0[part.clone()])
            .map(|(x, v)| x + v * t)
            .collect();
        baseline_drift += rel(energy(&straight, &v0[part], gravity));
        let end = steps * per..(steps + 1) * per;
        simulator_drift += rel(energy(
            &wide(&r.pos[end.clone()]),
            &wide(&r.vel[end]),
            gravity,
        ));
    }

    // One recorded step from up to 10 states of every held-out simulation.
    let stride = ((recorded - 1) / 10).max(1);
    let starts: Vec<usize> = (0..recorded - 1).step_by(stride).collect();
    // The states `ahead` recorded steps after each start, positions or velocities.
    let gather = |velocities: bool, ahead: usize| -> Vec<f32> {
        held.iter()
            .flat_map(|r| {
                let s = if velocities { &r.vel } else { &r.pos };
                starts
                    .iter()
                    .flat_map(move |&t| s[(t + ahead) * per..(t + ahead + 1) * per].iter().copied())
            })
            .collect()
    };
    let mut x = wide(&gather(false, 0));
    let mut v = wide(&gather(true, 0));
    let next = gather(false, 1);
    let straight: Vec<f64> = x.iter().zip(&v).map(|(x, v)| x + v * interval).collect();
    leapfrog(&mut x, &mut v, dt, substeps, learned)?;

    Ok(RolloutReport {
        held_out_simulations: held.len(),
        rollout_steps: steps,
        one_step_mse: mse(&x, &next),
        baseline_one_step_mse: mse(&straight, &next),
        rollout_mse_20: *learned_mse.last().expect("at least one step"),
        baseline_rollout_mse_20: *baseline_mse.last().expect("at least one step"),
        energy_drift: drift,
        baseline_energy_drift: baseline_drift,
        simulator_energy_drift: simulator_drift,
        rollout_mse: learned_mse,
        baseline_rollout_mse: baseline_mse,
    })
}
