//! Properties of epoch orders: permutations, resume and ranks.

use std::collections::HashSet;

use frugal_store::{EpochPlan, Order, OrderSpec, SampleRef, rank_range};
use proptest::prelude::*;

fn spec_strategy() -> impl Strategy<Value = OrderSpec> {
    (prop::sample::select(Order::ALL.to_vec()), 1u64..40, 1u64..6).prop_map(
        |(order, window, spread)| OrderSpec {
            order,
            window,
            spread,
        },
    )
}

fn sizes_strategy() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(1u64..30, 1..12)
}

fn every_sample(sizes: &[u64]) -> HashSet<SampleRef> {
    sizes
        .iter()
        .enumerate()
        .flat_map(|(s, &n)| {
            (0..n).map(move |row| SampleRef {
                shard: s as u32,
                row,
            })
        })
        .collect()
}

proptest! {
    #[test]
    fn an_epoch_visits_every_sample_once(
        spec in spec_strategy(), sizes in sizes_strategy(), seed: u64, epoch in 0u64..5,
    ) {
        let plan = EpochPlan::new(spec, seed, epoch, &sizes);
        let order = plan.materialize();
        prop_assert_eq!(order.len() as u64, plan.total());
        let set: HashSet<SampleRef> = order.iter().copied().collect();
        prop_assert_eq!(set.len(), order.len());
        prop_assert_eq!(set, every_sample(&sizes));
        // Windows tile the epoch and respect the window size (plus one row per shard
        // stripe rounding under `window` order).
        for w in 0..plan.windows() {
            let (a, b) = plan.window_range(w);
            let content = plan.window(w);
            prop_assert_eq!(content.samples().len() as u64, b - a);
            prop_assert!(b - a <= spec.window + spec.spread);
            if b > a {
                prop_assert_eq!(plan.window_of(a), w);
            }
        }
    }

    #[test]
    fn the_order_is_a_pure_function(
        spec in spec_strategy(), sizes in sizes_strategy(), seed: u64, epoch in 0u64..5,
    ) {
        let a = EpochPlan::new(spec, seed, epoch, &sizes).materialize();
        let b = EpochPlan::new(spec, seed, epoch, &sizes).materialize();
        prop_assert_eq!(a, b);
    }

    #[test]
    fn rank_slices_are_disjoint_and_cover_the_epoch(total in 0u64..10_000, ranks in 1u64..17) {
        let mut next = 0;
        for r in 0..ranks {
            let (a, b) = rank_range(total, r, ranks);
            prop_assert_eq!(a, next);
            prop_assert!(b - a == total / ranks || b - a == total / ranks + 1);
            next = b;
        }
        prop_assert_eq!(next, total);
    }
}

#[test]
fn epochs_and_seeds_change_the_order() {
    let sizes = vec![100; 20];
    for order in [Order::Shard, Order::Window, Order::Full] {
        let spec = OrderSpec {
            order,
            window: 64,
            spread: 4,
        };
        let e0 = EpochPlan::new(spec, 1, 0, &sizes).materialize();
        let e1 = EpochPlan::new(spec, 1, 1, &sizes).materialize();
        let s2 = EpochPlan::new(spec, 2, 0, &sizes).materialize();
        assert_ne!(e0, e1, "{order}");
        assert_ne!(e0, s2, "{order}");
    }
    let seq = OrderSpec {
        order: Order::Sequential,
        window: 64,
        spread: 4,
    };
    let a = EpochPlan::new(seq, 1, 0, &sizes).materialize();
    assert_eq!(a, EpochPlan::new(seq, 9, 3, &sizes).materialize());
    assert_eq!(a[150], SampleRef { shard: 1, row: 50 });
}

/// `window` order reads in long runs: each window is a few stripes, each stripe a
/// contiguous range of one shard, and consecutive windows of a group continue the same
/// shards where the previous stripe ended.
#[test]
fn window_order_reads_sequentially_within_each_shard() {
    let sizes = vec![1000; 32];
    let spec = OrderSpec {
        order: Order::Window,
        window: 800,
        spread: 8,
    };
    let plan = EpochPlan::new(spec, 5, 0, &sizes);
    let mut next_row = vec![0u64; sizes.len()];
    for w in 0..plan.windows() {
        let content = plan.window(w);
        assert!(content.segments.len() <= 8);
        for seg in &content.segments {
            assert_eq!(seg.start, next_row[seg.shard as usize]);
            next_row[seg.shard as usize] += seg.len;
        }
    }
    assert!(next_row.iter().all(|&r| r == 1000));
}

/// A window mixes samples from `spread` shards, so neighbours in the epoch rarely share
/// a shard, unlike `shard` order.
#[test]
fn window_order_mixes_shards() {
    let sizes = vec![1000; 32];
    let same_shard_neighbours = |order| {
        let spec = OrderSpec {
            order,
            window: 800,
            spread: 8,
        };
        let o = EpochPlan::new(spec, 5, 0, &sizes).materialize();
        o.windows(2).filter(|p| p[0].shard == p[1].shard).count() as f64 / o.len() as f64
    };
    assert!(same_shard_neighbours(Order::Shard) > 0.99);
    let window = same_shard_neighbours(Order::Window);
    assert!(window < 0.2, "{window}");
}
