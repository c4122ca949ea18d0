//! Leapfrog steps of a Plummer sphere timed by method, particle count and thread count,
//! as pair interactions per second (N(N−1) per step, whatever the method computes):
//! `cargo run --release -p frugal-sim --example pair_rate -- direct 1000,5000 [THETA]`.
//! One JSON object per line (for the tree, with its RMS force error against direct
//! summation); `bench/peers/nbody_rebound.py` prints the same for REBOUND.

#![allow(clippy::print_stdout)] // a benchmark prints its figures

use std::time::Instant;

use frugal_sim::{Gravity, Initial, Method, Simulation, Vec3s, accelerations};

/// Seconds per step: the median of steps run until a second has passed (at least 3).
fn seconds_per_step(sim: &mut Simulation, dt: f64) -> f64 {
    sim.step(dt);
    let mut times = Vec::new();
    let began = Instant::now();
    while times.len() < 3 || began.elapsed().as_secs_f64() < 1.0 {
        let start = Instant::now();
        sim.step(dt);
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let method = args.get(1).map_or("direct", String::as_str);
    let sizes: Vec<usize> = args
        .get(2)
        .map_or("1000,5000,10000", String::as_str)
        .split(',')
        .map(|n| n.parse().expect("particle counts such as 1000,5000"))
        .collect();
    let theta: f64 = args.get(3).map_or(0.5, |t| t.parse().expect("θ"));
    let method = match method {
        "direct" => Method::Direct,
        "tree" => Method::BarnesHut { theta },
        other => panic!("method is direct or tree, not {other}"),
    };
    let gravity = Gravity::softened(0.01);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for &n in &sizes {
        let start = Initial::Plummer.generate(n, 1, gravity).expect("particles");
        // The tree's accuracy at this θ: RMS force error relative to direct summation.
        let force_error = matches!(method, Method::BarnesHut { .. }).then(|| {
            let (mut tree, mut direct) = (Vec3s::default(), Vec3s::default());
            accelerations(&start, gravity, method, true, &mut tree);
            accelerations(&start, gravity, Method::Direct, true, &mut direct);
            let (mut num, mut den) = (0.0, 0.0);
            for k in 0..3 {
                for (a, b) in tree[k].iter().zip(&direct[k]) {
                    num += (a - b) * (a - b);
                    den += b * b;
                }
            }
            (num / den).sqrt()
        });
        for threads in [1, cores] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a thread pool");
            let seconds = pool.install(|| {
                let mut sim = Simulation::new(start.clone(), gravity, method, threads > 1);
                seconds_per_step(&mut sim, 1e-4)
            });
            let line = serde_json::json!({
                "engine": "frugal-sim",
                "method": if matches!(method, Method::Direct) { "direct" } else { "tree" },
                "theta": theta,
                "n": n,
                "threads": threads,
                "seconds_per_step": seconds,
                "pairs_per_s": (n * (n - 1)) as f64 / seconds,
                "rms_force_error": force_error,
            });
            println!("{line}");
            if cores == 1 {
                break;
            }
        }
    }
}
