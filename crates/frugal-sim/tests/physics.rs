//! The simulator against physics: orbits close, energy is conserved to O(dt²), the tree
//! approximates direct summation, momentum is conserved.

use frugal_sim::{Gravity, Initial, Method, Particles, Simulation, Vec3s, accelerations};
use proptest::prelude::*;

fn distance(a: [f64; 3], b: [f64; 3]) -> f64 {
    (0..3).map(|k| (a[k] - b[k]).powi(2)).sum::<f64>().sqrt()
}

#[test]
fn a_two_body_circular_orbit_returns_to_its_start() {
    for (softening, method) in [
        (0.0, Method::Direct),
        (0.2, Method::Direct),
        (0.0, Method::BarnesHut { theta: 0.5 }),
    ] {
        let gravity = Gravity::softened(softening);
        let start = Initial::TwoBody.generate(2, 0, gravity).unwrap();
        let period = Initial::two_body_period(gravity);
        let steps = 2000;
        let mut sim = Simulation::new(start.clone(), gravity, method, false);
        let mut farthest: f64 = 0.0;
        for _ in 0..steps {
            sim.step(period / steps as f64);
            farthest = farthest.max(distance(sim.particles.position(0), start.position(0)));
        }
        // Half way round it was a whole separation away; after one period it is back.
        assert!((farthest - 1.0).abs() < 1e-3, "{softening}: {farthest}");
        for i in 0..2 {
            let off = distance(sim.particles.position(i), start.position(i));
            assert!(
                off < 1e-4,
                "ε {softening}, {method:?}: particle {i} is {off} away"
            );
            let dv = distance(sim.particles.velocity(i), start.velocity(i));
            assert!(dv < 1e-4, "ε {softening}: velocity {i} is {dv} off");
        }
    }
}

/// The largest |ΔE/E| over `steps` steps of `dt`, sampled every 10 steps.
fn energy_error(start: &Particles, gravity: Gravity, dt: f64, steps: usize) -> f64 {
    let mut sim = Simulation::new(start.clone(), gravity, Method::Direct, true);
    let e0 = sim.energies().total;
    let mut worst: f64 = 0.0;
    for s in 1..=steps {
        sim.step(dt);
        if s % 10 == 0 {
            worst = worst.max(((sim.energies().total - e0) / e0).abs());
        }
    }
    worst
}

#[test]
fn a_plummer_sphere_conserves_energy_to_second_order_in_dt() {
    let gravity = Gravity::softened(0.05);
    let start = Initial::Plummer.generate(1000, 7, gravity).unwrap();
    // 1000 steps of 0.005: five time units, about two crossing times.
    let coarse = energy_error(&start, gravity, 0.005, 1000);
    assert!(coarse <= 1e-5, "|ΔE/E| = {coarse:e}");
    let fine = energy_error(&start, gravity, 0.0025, 2000);
    let ratio = coarse / fine;
    assert!(
        (3.0..5.0).contains(&ratio),
        "halving dt cut the error {ratio}× ({coarse:e} → {fine:e})"
    );
}

#[test]
fn plummer_spheres_are_in_henon_units() {
    let gravity = Gravity::softened(0.0);
    let p = Initial::Plummer.generate(20_000, 3, gravity).unwrap();
    let sim = Simulation::new(p, gravity, Method::BarnesHut { theta: 0.7 }, true);
    let e = sim.energies();
    assert!((e.total + 0.25).abs() < 0.01, "{e:?}");
    assert!(
        (2.0 * e.kinetic / -e.potential - 1.0).abs() < 0.05,
        "virial ratio: {e:?}"
    );
}

/// RMS over particles of |a − b|, relative to the RMS of |b|.
fn rms_relative(a: &Vec3s, b: &Vec3s) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for k in 0..3 {
        for (x, y) in a[k].iter().zip(&b[k]) {
            num += (x - y) * (x - y);
            den += y * y;
        }
    }
    (num / den).sqrt()
}

#[test]
fn barnes_hut_is_within_one_percent_of_direct_summation() {
    let gravity = Gravity::softened(0.01);
    for initial in [
        Initial::Plummer,
        Initial::UniformCube,
        Initial::ColdCollapse,
    ] {
        let p = initial.generate(5000, 11, gravity).unwrap();
        let (mut direct, mut tree, mut exact) = Default::default();
        accelerations(&p, gravity, Method::Direct, true, &mut direct);
        accelerations(
            &p,
            gravity,
            Method::BarnesHut { theta: 0.5 },
            true,
            &mut tree,
        );
        let err = rms_relative(&tree, &direct);
        assert!(err < 0.01, "{}: {err:e}", initial.name());
        // θ → 0 opens every cell: the tree sums every pair.
        accelerations(
            &p,
            gravity,
            Method::BarnesHut { theta: 1e-9 },
            false,
            &mut exact,
        );
        assert!(rms_relative(&exact, &direct) < 1e-12, "{}", initial.name());
    }
}

#[test]
fn bad_requests_are_refused() {
    let g = Gravity::softened(0.1);
    assert!(
        Initial::TwoBody
            .generate(3, 0, g)
            .unwrap_err()
            .0
            .contains("exactly 2")
    );
    assert!(Initial::Plummer.generate(0, 0, g).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Forces are equal and opposite: the total force vanishes, whatever the particles,
    /// serial or parallel (which must agree exactly: each target is summed the same way).
    #[test]
    fn direct_forces_conserve_momentum(
        bodies in prop::collection::vec(
            (prop::array::uniform3(-10.0f64..10.0), 0.01f64..5.0),
            1..200,
        ),
        softening in 0.0f64..0.5,
    ) {
        let mut p = Particles::with_capacity(bodies.len());
        for (pos, m) in &bodies {
            p.push(*pos, [0.0; 3], *m);
        }
        let gravity = Gravity::softened(softening);
        let (mut serial, mut parallel) = (Vec3s::default(), Vec3s::default());
        accelerations(&p, gravity, Method::Direct, false, &mut serial);
        accelerations(&p, gravity, Method::Direct, true, &mut parallel);
        prop_assert_eq!(&serial, &parallel);
        for a in &serial {
            let (force, scale) = a.iter().zip(&p.mass).fold((0.0, 0.0), |(f, s), (a, m)| {
                (f + m * a, s + (m * a).abs())
            });
            prop_assert!(force.abs() <= 1e-12 * scale.max(1e-300), "{} of {}", force, scale);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Exactly k neighbours per particle, never itself, and the k nearest: their distances
    /// are the k smallest of a brute-force search (distances, not indices, so ties between
    /// equally distant particles may fall either way).
    #[test]
    fn the_knn_graph_matches_brute_force(
        pos in prop::collection::vec(prop::array::uniform3(-5.0f32..5.0), 2..300),
        k_pick in 1usize..40,
    ) {
        let n = pos.len();
        let k = 1 + k_pick % (n - 1);
        let g = frugal_sim::knn_graph(&pos, k, true).unwrap();
        prop_assert_eq!(&g, &frugal_sim::knn_graph(&pos, k, false).unwrap());
        prop_assert_eq!(g.senders.len(), n * k);
        let d2 = |a: [f32; 3], b: [f32; 3]| (0..3).map(|c| (a[c] - b[c]).powi(2)).sum::<f32>();
        for i in 0..n {
            let edges = i * k..(i + 1) * k;
            prop_assert!(g.receivers[edges.clone()].iter().all(|&r| r as usize == i));
            let mut got: Vec<f32> = g.senders[edges]
                .iter()
                .map(|&j| {
                    assert_ne!(j as usize, i, "a self loop at {}", i);
                    d2(pos[i], pos[j as usize])
                })
                .collect();
            let mut all: Vec<f32> = (0..n).filter(|&j| j != i).map(|j| d2(pos[i], pos[j])).collect();
            all.sort_by(f32::total_cmp);
            got.sort_by(f32::total_cmp);
            prop_assert_eq!(&got[..], &all[..k]);
        }
    }
}

#[test]
fn a_knn_graph_needs_more_particles_than_neighbours() {
    let pos = [[0.0f32; 3], [1.0, 0.0, 0.0]];
    assert!(
        frugal_sim::knn_graph(&pos, 2, false)
            .unwrap_err()
            .to_string()
            .contains("more than 2")
    );
    assert!(frugal_sim::knn_graph(&pos, 0, false).is_err());
    assert_eq!(
        frugal_sim::knn_graph(&pos, 1, false).unwrap().senders,
        [1, 0]
    );
}
