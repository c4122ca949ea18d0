//! Variation operators keep every gene in its domain, whatever the bounds.

use frugal_evolve::operators::{polynomial_mutation, sbx};
use frugal_evolve::{Gene, Space};
use frugal_rand::Xoshiro256pp;
use proptest::prelude::*;

/// A gene with arbitrary bounds (whole ones when `integer`) and a value inside them.
fn gene_and_values() -> impl Strategy<Value = (Gene, f64, f64)> {
    (
        any::<bool>(),
        -1e6..1e6f64,
        1e-6..1e6f64,
        0.0..=1.0f64,
        0.0..=1.0f64,
    )
        .prop_map(|(integer, low, width, u, v)| {
            let (low, high) = if integer {
                (low.round(), low.round() + width.ceil())
            } else {
                (low, low + width)
            };
            let gene = Gene {
                name: String::new(),
                low,
                high,
                integer,
            };
            let (x, y) = (
                gene.repair(low + u * (high - low)),
                gene.repair(low + v * (high - low)),
            );
            (gene, x, y)
        })
}

fn space_and_parents() -> impl Strategy<Value = (Space, Vec<f64>, Vec<f64>)> {
    prop::collection::vec(gene_and_values(), 1..8).prop_map(|genes| {
        let a = genes.iter().map(|g| g.1).collect();
        let b = genes.iter().map(|g| g.2).collect();
        let genes = genes
            .into_iter()
            .enumerate()
            .map(|(i, (g, _, _))| Gene {
                name: format!("g{i}"),
                ..g
            })
            .collect();
        (Space { genes }, a, b)
    })
}

proptest! {
    #[test]
    fn sbx_children_stay_in_the_space(
        (space, a, b) in space_and_parents(),
        eta in 0.0..200.0f64,
        var_prob in 0.0..=1.0f64,
        seed in any::<u64>(),
    ) {
        prop_assert!(space.contains(&a) && space.contains(&b));
        let mut rng = Xoshiro256pp::new(seed);
        for _ in 0..20 {
            let (c1, c2) = sbx(&mut rng, &space, &a, &b, eta, var_prob);
            prop_assert!(space.contains(&c1), "{:?} from {:?} {:?}", c1, a, b);
            prop_assert!(space.contains(&c2), "{:?} from {:?} {:?}", c2, a, b);
        }
    }

    #[test]
    fn mutants_stay_in_the_space(
        (space, a, _) in space_and_parents(),
        eta in 0.0..200.0f64,
        prob in 0.0..=1.0f64,
        seed in any::<u64>(),
    ) {
        let mut rng = Xoshiro256pp::new(seed);
        for _ in 0..20 {
            let mut x = a.clone();
            polynomial_mutation(&mut rng, &space, &mut x, eta, prob);
            prop_assert!(space.contains(&x), "{:?} from {:?}", x, a);
        }
    }

    #[test]
    fn large_indices_keep_children_near_their_parents(
        (space, a, b) in space_and_parents(),
        seed in any::<u64>(),
    ) {
        // With η = 10⁴ the spread factor is within 1 ± 37/10⁴ even for the most extreme
        // 53-bit uniform draw, so each child lies within 1 % of the parents' distance of
        // a parent (plus rounding, for integer genes), and a mutation moves a gene by under
        // 1 % of its range.
        let mut rng = Xoshiro256pp::new(seed);
        let (c1, c2) = sbx(&mut rng, &space, &a, &b, 1e4, 1.0);
        for (i, gene) in space.genes.iter().enumerate() {
            let spread = (a[i] - b[i]).abs();
            for c in [c1[i], c2[i]] {
                let off = (c - a[i]).abs().min((c - b[i]).abs());
                if gene.integer {
                    prop_assert!(off <= 0.01 * spread + 0.5, "{} from {} {}", c, a[i], b[i]);
                } else {
                    prop_assert!(off <= 0.01 * spread + 1e-9 * gene.high.abs().max(gene.low.abs()),
                        "{} from {} {}", c, a[i], b[i]);
                }
            }
        }
        let mut x = a.clone();
        polynomial_mutation(&mut rng, &space, &mut x, 1e4, 1.0);
        for (i, gene) in space.genes.iter().enumerate() {
            let range = gene.high - gene.low;
            if gene.integer {
                // The working range of an integer gene is one unit wider.
                prop_assert!((x[i] - a[i]).abs() <= 0.01 * (range + 1.0) + 0.5);
            } else {
                prop_assert!((x[i] - a[i]).abs() <= 0.01 * range);
            }
        }
    }
}

#[test]
fn integer_genes_still_move() {
    // Rounding must not freeze integer genes under the default indices.
    let space = Space::new(vec![Gene::int("k", 0.0, 10.0)]).unwrap();
    let mut rng = Xoshiro256pp::new(8);
    let mut seen = [false; 11];
    for _ in 0..2_000 {
        let (c, _) = sbx(&mut rng, &space, &[3.0], &[7.0], 15.0, 1.0);
        let mut m = c.clone();
        polynomial_mutation(&mut rng, &space, &mut m, 20.0, 1.0);
        seen[c[0] as usize] = true;
        seen[m[0] as usize] = true;
    }
    assert!(seen[2..=8].iter().all(|&s| s), "{seen:?}");
}
