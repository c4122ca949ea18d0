//! Variation operators for bounded genes: simulated binary crossover and polynomial
//! mutation, in the bounded forms Deb uses in NSGA-II.
//!
//! Both work on real numbers. Integer genes take part as reals over their bounds widened by
//! half a unit each side, and the result is rounded to the nearest whole number (halves
//! away from zero) and clamped to the bounds. A consequence worth knowing: with large
//! distribution indices the real-valued step is usually under half a unit, so an integer
//! gene with a narrow range changes less often than its mutation probability suggests.

use frugal_rand::Xoshiro256pp;

use crate::Space;

/// Parent values closer than this are treated as equal: the spread factor would divide by
/// their difference.
const SAME: f64 = 1e-14;

/// Simulated binary crossover (Deb and Agrawal 1995) with bounds: two children from parents
/// `a` and `b`.
///
/// Each gene is crossed with probability `var_prob`, otherwise the children inherit the
/// parents' values. A crossed gene's children lie symmetrically about the parents' mean,
/// at a spread drawn from a polynomial distribution of index `eta` whose tails are cut at
/// the bounds: large `eta` keeps children near their parents, small `eta` lets them roam.
/// The two children's values are then exchanged with probability one half, so neither child
/// is tied to the smaller parent value.
pub fn sbx(
    rng: &mut Xoshiro256pp,
    space: &Space,
    a: &[f64],
    b: &[f64],
    eta: f64,
    var_prob: f64,
) -> (Vec<f64>, Vec<f64>) {
    let mut c1 = a.to_vec();
    let mut c2 = b.to_vec();
    let exponent = 1.0 / (eta + 1.0);
    for (i, gene) in space.genes.iter().enumerate() {
        if !rng.chance(var_prob) || (a[i] - b[i]).abs() <= SAME {
            continue;
        }
        let (lo, hi) = gene.working_bounds();
        let (y1, y2) = if a[i] < b[i] {
            (a[i], b[i])
        } else {
            (b[i], a[i])
        };
        let spread = y2 - y1;
        let u = rng.uniform();
        // The spread factor's distribution is truncated so that a child cannot land beyond
        // the bound on its side; `alpha` renormalises the remaining probability mass.
        let beta_q = |room: f64| {
            let beta = 1.0 + 2.0 * room / spread;
            let alpha = 2.0 - beta.powf(-(eta + 1.0));
            if u <= 1.0 / alpha {
                (u * alpha).powf(exponent)
            } else {
                (1.0 / (2.0 - u * alpha)).powf(exponent)
            }
        };
        let low_child = (0.5 * (y1 + y2 - beta_q(y1 - lo) * spread)).clamp(lo, hi);
        let high_child = (0.5 * (y1 + y2 + beta_q(hi - y2) * spread)).clamp(lo, hi);
        let (v1, v2) = if rng.chance(0.5) {
            (high_child, low_child)
        } else {
            (low_child, high_child)
        };
        c1[i] = gene.repair(v1);
        c2[i] = gene.repair(v2);
    }
    (c1, c2)
}

/// Polynomial mutation (Deb and Goyal 1996) with bounds, in place.
///
/// Each gene mutates with probability `prob`, by a step drawn from a polynomial
/// distribution of index `eta` scaled to the gene's range and shaped so that the result
/// stays within the bounds: large `eta` gives small steps.
pub fn polynomial_mutation(
    rng: &mut Xoshiro256pp,
    space: &Space,
    x: &mut [f64],
    eta: f64,
    prob: f64,
) {
    let exponent = 1.0 / (eta + 1.0);
    for (gene, value) in space.genes.iter().zip(x.iter_mut()) {
        if !rng.chance(prob) {
            continue;
        }
        let (lo, hi) = gene.working_bounds();
        let range = hi - lo;
        let y = *value;
        let u = rng.uniform();
        let step = if u < 0.5 {
            let room = 1.0 - (y - lo) / range;
            let v = 2.0 * u + (1.0 - 2.0 * u) * room.powf(eta + 1.0);
            v.powf(exponent) - 1.0
        } else {
            let room = 1.0 - (hi - y) / range;
            let v = 2.0 * (1.0 - u) + 2.0 * (u - 0.5) * room.powf(eta + 1.0);
            1.0 - v.powf(exponent)
        };
        *value = gene.repair((y + step * range).clamp(lo, hi));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sbx_children_average_to_the_parents() {
        // Without bounds in reach the spread distribution is symmetric about the parents'
        // mean, and each child pair keeps the mean exactly.
        let space = Space::uniform(1, -1e6, 1e6);
        let mut rng = Xoshiro256pp::new(1);
        let mut spread = 0.0;
        for _ in 0..10_000 {
            let (c1, c2) = sbx(&mut rng, &space, &[1.0], &[3.0], 2.0, 1.0);
            assert!((c1[0] + c2[0] - 4.0).abs() < 1e-9);
            spread += (c1[0] - c2[0]).abs() / 2.0 / 10_000.0;
        }
        // E|β| for η = 2 is larger than 1: SBX also explores beyond the parents.
        assert!(spread > 1.0 && spread < 2.0, "{spread}");
    }

    #[test]
    fn mutation_at_the_bounds_stays_inside() {
        let space = Space::uniform(2, 0.0, 1.0);
        let mut rng = Xoshiro256pp::new(2);
        let mut moved = 0;
        for _ in 0..10_000 {
            let mut x = [0.0, 1.0];
            polynomial_mutation(&mut rng, &space, &mut x, 5.0, 1.0);
            assert!(space.contains(&x), "{x:?}");
            moved += usize::from(x[0] > 0.0) + usize::from(x[1] < 1.0);
        }
        // A value at a bound moves inwards in the half of draws that point inwards; the
        // other half would step outside and are cut to a zero step.
        assert!((9_500..10_500).contains(&moved), "{moved}");
    }

    #[test]
    fn mutation_probability_is_per_gene() {
        let space = Space::uniform(10, 0.0, 1.0);
        let mut rng = Xoshiro256pp::new(3);
        let mut changed = 0;
        for _ in 0..2_000 {
            let mut x = [0.5; 10];
            polynomial_mutation(&mut rng, &space, &mut x, 20.0, 0.1);
            changed += x.iter().filter(|&&v| v != 0.5).count();
        }
        assert!((1_800..2_200).contains(&changed), "{changed}");
    }
}
