//! Standard test problems, for checking and comparing the optimisers.

use crate::Space;

/// The sphere function Σ xᵢ², minimum 0 at the origin.
pub fn sphere(x: &[f64]) -> f64 {
    x.iter().map(|v| v * v).sum()
}

/// The Rastrigin function 10·n + Σ (xᵢ² − 10·cos 2πxᵢ), minimum 0 at the origin, with a
/// local minimum near every point of the integer lattice.
pub fn rastrigin(x: &[f64]) -> f64 {
    const A: f64 = 10.0;
    A * x.len() as f64
        + x.iter()
            .map(|v| v * v - A * (std::f64::consts::TAU * v).cos())
            .sum::<f64>()
}

/// ZDT1 (Zitzler, Deb and Thiele 2000): two objectives over `x` in [0, 1]ⁿ, usually n = 30.
/// The Pareto front is f₂ = 1 − √f₁ for f₁ in [0, 1], reached where x₁…xₙ₋₁ are 0.
///
/// # Panics
/// If `x` has fewer than two values.
pub fn zdt1(x: &[f64]) -> [f64; 2] {
    assert!(x.len() >= 2, "ZDT1 needs at least two variables");
    let f1 = x[0];
    let g = 1.0 + 9.0 * x[1..].iter().sum::<f64>() / (x.len() - 1) as f64;
    [f1, g * (1.0 - (f1 / g).sqrt())]
}

/// The sphere's usual domain, [−5.12, 5.12]ⁿ.
pub fn sphere_space(n: usize) -> Space {
    Space::uniform(n, -5.12, 5.12)
}

/// Rastrigin's usual domain, [−5.12, 5.12]ⁿ.
pub fn rastrigin_space(n: usize) -> Space {
    Space::uniform(n, -5.12, 5.12)
}

/// ZDT1's domain, [0, 1]ⁿ; the standard problem has n = 30.
pub fn zdt1_space(n: usize) -> Space {
    Space::uniform(n, 0.0, 1.0)
}

/// The area dominated by `points` (two minimised objectives) and bounded by `reference`.
///
/// Points that do not strictly dominate the reference add nothing and are ignored, as are
/// points with a NaN. Larger is better; the true ZDT1 front gives 2/3 with reference (1, 1).
pub fn hypervolume_2d(points: &[[f64; 2]], reference: [f64; 2]) -> f64 {
    let mut inside: Vec<[f64; 2]> = points
        .iter()
        .copied()
        .filter(|p| p[0] < reference[0] && p[1] < reference[1])
        .collect();
    inside.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
    // Sweeping in increasing f₁, each point that improves on the best f₂ so far adds the
    // strip between its f₂ and that best, reaching from its f₁ to the reference.
    let mut area = 0.0;
    let mut ceiling = reference[1];
    for [f1, f2] in inside {
        if f2 < ceiling {
            area += (reference[0] - f1) * (ceiling - f2);
            ceiling = f2;
        }
    }
    area
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optima_are_zero() {
        assert_eq!(sphere(&[0.0; 10]), 0.0);
        assert!(rastrigin(&[0.0; 10]).abs() < 1e-12);
        assert!((rastrigin(&[1.0, 0.0]) - 1.0).abs() < 1e-12);
        assert!(sphere_space(10).contains(&[5.12; 10]));
    }

    #[test]
    fn zdt1_front() {
        let mut x = [0.0; 30];
        x[0] = 0.25;
        assert_eq!(zdt1(&x), [0.25, 0.5]);
        x[5] = 1.0;
        assert!(zdt1(&x)[1] > 0.5);
    }

    #[test]
    fn hypervolume_of_simple_sets() {
        assert_eq!(hypervolume_2d(&[], [1.0, 1.0]), 0.0);
        assert_eq!(hypervolume_2d(&[[0.0, 0.0]], [1.0, 1.0]), 1.0);
        let staircase = [
            [0.5, 0.0],
            [0.0, 0.5],
            [0.25, 0.25],
            [0.6, 0.6],
            [2.0, -1.0],
        ];
        assert!((hypervolume_2d(&staircase, [1.0, 1.0]) - 0.8125).abs() < 1e-15);
        assert_eq!(hypervolume_2d(&[[f64::NAN, 0.0]], [1.0, 1.0]), 0.0);
    }

    #[test]
    fn true_zdt1_front_gives_two_thirds() {
        let n = 100_000;
        let front: Vec<[f64; 2]> = (0..=n)
            .map(|i| {
                let f1 = f64::from(i) / f64::from(n);
                [f1, 1.0 - f1.sqrt()]
            })
            .collect();
        let hv = hypervolume_2d(&front, [1.0, 1.0]);
        assert!(hv < 2.0 / 3.0 && 2.0 / 3.0 - hv < 1e-4, "{hv}");
    }
}
