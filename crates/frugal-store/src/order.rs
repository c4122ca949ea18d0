//! Epoch orders: which sample comes at which position of an epoch, as a pure function of
//! (seed, epoch, shard sizes, order options, ranks). Nothing here touches a file; the
//! reader asks for one window at a time and reads its segments.
//!
//! The random streams are defined here (SplitMix64, Fisher–Yates with Lemire's bounded
//! draws, a 4-round Feistel permutation) rather than taken from a library, so an order —
//! and with it a resume — stays the same across versions of every dependency.

use std::fmt;
use std::str::FromStr;

use frugal_rand::SplitMix64 as Rng;
use serde::{Deserialize, Serialize};

/// How an epoch visits the samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Shards in order, samples in order.
    Sequential,
    /// Shard order shuffled, samples within a shard in order.
    Shard,
    /// Shard order shuffled; groups of `spread` shards are read together in stripes of
    /// about `window / spread` samples, and each window of about `window` samples is
    /// shuffled. Sequential reads with a shuffle bounded by a RAM budget.
    #[default]
    Window,
    /// A uniformly random permutation of all samples: random reads, for small data.
    Full,
}

impl Order {
    /// Every order.
    pub const ALL: [Order; 4] = [Order::Sequential, Order::Shard, Order::Window, Order::Full];

    fn name(self) -> &'static str {
        match self {
            Order::Sequential => "sequential",
            Order::Shard => "shard",
            Order::Window => "window",
            Order::Full => "full",
        }
    }
}

impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Order {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Order::ALL
            .into_iter()
            .find(|o| o.name() == s)
            .ok_or_else(|| {
                format!("unknown order `{s}`; expected sequential, shard, window or full")
            })
    }
}

/// Bytes read from one shard in one go under `window` order, when the budget allows.
const STRIPE_BYTES: u64 = 4 << 20;
/// Most shards mixed into one window.
const MAX_SPREAD: u64 = 16;
/// Most samples in one window: positions in a window are `u32`.
const MAX_WINDOW: u64 = 1 << 30;

/// An order and its parameters. Two runs see the same order only with the same spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSpec {
    /// The order.
    pub order: Order,
    /// Samples per window: the unit of reading and, for `window`, of shuffling.
    pub window: u64,
    /// Shards read together (`window` order only).
    pub spread: u64,
}

impl OrderSpec {
    /// Sizes the window to a RAM budget: `budget_bytes` is the memory one window may
    /// hold; stripes of about 4 MiB per shard decide how many shards a window mixes.
    pub fn for_budget(order: Order, budget_bytes: u64, sample_bytes: u64) -> Self {
        let window = (budget_bytes / sample_bytes.max(1)).clamp(1, MAX_WINDOW);
        // A window holds up to `window + spread - 1` samples (stripes round up), so
        // spreading wider than the window would break the budget.
        let spread = (budget_bytes / STRIPE_BYTES)
            .clamp(1, MAX_SPREAD)
            .min(window);
        Self {
            order,
            window,
            spread,
        }
    }
}

/// A sample's place on disk: shard number in manifest order, row within the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SampleRef {
    /// Index of the shard in the manifest.
    pub shard: u32,
    /// Row in the shard.
    pub row: u64,
}

/// Contiguous rows of one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Index of the shard in the manifest.
    pub shard: u32,
    /// First row.
    pub start: u64,
    /// Rows.
    pub len: u64,
}

/// What one window reads and in which order it hands samples out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowContent {
    /// Segments, read into one buffer in this order.
    pub segments: Vec<Segment>,
    /// `emit[k]` is the buffer row of the window's `k`-th sample.
    pub emit: Vec<u32>,
}

impl WindowContent {
    /// The samples of the window in emission order.
    pub fn samples(&self) -> Vec<SampleRef> {
        let rows: Vec<SampleRef> = self
            .segments
            .iter()
            .flat_map(|s| {
                (s.start..s.start + s.len).map(|row| SampleRef {
                    shard: s.shard,
                    row,
                })
            })
            .collect();
        self.emit.iter().map(|&i| rows[i as usize]).collect()
    }
}

#[derive(Debug, Clone)]
struct Group {
    /// Positions in the shuffled shard list.
    shards: std::ops::Range<usize>,
    windows: u64,
    first_window: usize,
}

/// One epoch's order.
#[derive(Debug, Clone)]
pub struct EpochPlan {
    spec: OrderSpec,
    seed: u64,
    epoch: u64,
    sizes: Vec<u64>,
    /// First global position of each shard in manifest order.
    shard_starts: Vec<u64>,
    /// Manifest shard indices in visiting order.
    shard_order: Vec<u32>,
    /// First position of each window, plus the total at the end.
    window_starts: Vec<u64>,
    groups: Vec<Group>,
    total: u64,
}

impl EpochPlan {
    /// The order of epoch `epoch` over shards of the given sample counts.
    pub fn new(spec: OrderSpec, seed: u64, epoch: u64, sizes: &[u64]) -> Self {
        let spec = OrderSpec {
            window: spec.window.clamp(1, MAX_WINDOW),
            spread: spec.spread.clamp(1, MAX_SPREAD),
            ..spec
        };
        let mut shard_starts = Vec::with_capacity(sizes.len());
        let mut total = 0u64;
        for &s in sizes {
            shard_starts.push(total);
            total += s;
        }
        let mut shard_order: Vec<u32> = (0..sizes.len() as u32).collect();
        if matches!(spec.order, Order::Shard | Order::Window) {
            shuffle(&mut shard_order, &mut Rng::new(key(seed, epoch, 0, 0)));
        }
        let mut plan = Self {
            spec,
            seed,
            epoch,
            sizes: sizes.to_vec(),
            shard_starts,
            shard_order,
            window_starts: Vec::new(),
            groups: Vec::new(),
            total,
        };
        if spec.order == Order::Window {
            plan.plan_groups();
        } else {
            let n = total.div_ceil(spec.window);
            plan.window_starts = (0..=n).map(|w| (w * spec.window).min(total)).collect();
        }
        plan
    }

    fn plan_groups(&mut self) {
        let g = self.spec.spread as usize;
        let mut pos = 0u64;
        let mut start = 0;
        while start < self.shard_order.len() {
            let end = (start + g).min(self.shard_order.len());
            let members: Vec<u64> = self.shard_order[start..end]
                .iter()
                .map(|&s| self.sizes[s as usize])
                .collect();
            let n: u64 = members.iter().sum();
            let windows = n.div_ceil(self.spec.window);
            self.groups.push(Group {
                shards: start..end,
                windows,
                first_window: self.window_starts.len(),
            });
            for j in 0..windows {
                self.window_starts.push(pos);
                pos += members
                    .iter()
                    .map(|&m| stripe(m, windows, j).1)
                    .sum::<u64>();
            }
            start = end;
        }
        self.window_starts.push(pos);
    }

    /// Sample counts of the shards, in manifest order.
    pub fn shard_sizes(&self) -> &[u64] {
        &self.sizes
    }

    /// Samples in the epoch.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Windows in the epoch.
    pub fn windows(&self) -> usize {
        self.window_starts.len() - 1
    }

    /// Positions `[start, end)` of window `w`.
    pub fn window_range(&self, w: usize) -> (u64, u64) {
        (self.window_starts[w], self.window_starts[w + 1])
    }

    /// The window holding position `pos` (`pos < total`).
    pub fn window_of(&self, pos: u64) -> usize {
        self.window_starts.partition_point(|&s| s <= pos) - 1
    }

    /// The segments window `w` reads, without working out its emission order.
    pub fn segments(&self, w: usize) -> Vec<Segment> {
        let (start, end) = self.window_range(w);
        match self.spec.order {
            Order::Sequential | Order::Shard => {
                let mut segments = Vec::new();
                let mut pos = start;
                // The visiting order's running start of each shard is needed; walk it.
                let mut run = 0u64;
                for &s in &self.shard_order {
                    let size = self.sizes[s as usize];
                    if run + size > pos && pos < end {
                        let row = pos - run;
                        let take = (size - row).min(end - pos);
                        segments.push(Segment {
                            shard: s,
                            start: row,
                            len: take,
                        });
                        pos += take;
                    }
                    run += size;
                    if pos >= end {
                        break;
                    }
                }
                segments
            }
            Order::Window => {
                let gi = self.groups.partition_point(|g| g.first_window <= w) - 1;
                let group = &self.groups[gi];
                let j = (w - group.first_window) as u64;
                self.shard_order[group.shards.clone()]
                    .iter()
                    .filter_map(|&s| {
                        let (first, n) = stripe(self.sizes[s as usize], group.windows, j);
                        (n > 0).then_some(Segment {
                            shard: s,
                            start: first,
                            len: n,
                        })
                    })
                    .collect()
            }
            // The runs of a random permutation are only known by computing it.
            Order::Full => self.window(w).segments,
        }
    }

    /// Segments and emission order of window `w`.
    pub fn window(&self, w: usize) -> WindowContent {
        let (start, end) = self.window_range(w);
        let len = end - start;
        match self.spec.order {
            Order::Sequential | Order::Shard => WindowContent {
                segments: self.segments(w),
                emit: (0..len as u32).collect(),
            },
            Order::Window => {
                let mut emit: Vec<u32> = (0..len as u32).collect();
                shuffle(
                    &mut emit,
                    &mut Rng::new(key(self.seed, self.epoch, 1, w as u64)),
                );
                WindowContent {
                    segments: self.segments(w),
                    emit,
                }
            }
            Order::Full => {
                let perm = Feistel::new(self.total, key(self.seed, self.epoch, 2, 0));
                let ids: Vec<u64> = (start..end).map(|p| perm.apply(p)).collect();
                let mut sorted = ids.clone();
                sorted.sort_unstable();
                let mut segments: Vec<Segment> = Vec::new();
                for &id in &sorted {
                    let r = self.locate(id);
                    match segments.last_mut() {
                        Some(last) if last.shard == r.shard && last.start + last.len == r.row => {
                            last.len += 1;
                        }
                        _ => segments.push(Segment {
                            shard: r.shard,
                            start: r.row,
                            len: 1,
                        }),
                    }
                }
                let emit = ids
                    .iter()
                    .map(|id| sorted.binary_search(id).expect("present") as u32)
                    .collect();
                WindowContent { segments, emit }
            }
        }
    }

    /// A sample by its index in manifest order (shards concatenated).
    fn locate(&self, id: u64) -> SampleRef {
        let shard = self.shard_starts.partition_point(|&s| s <= id) - 1;
        SampleRef {
            shard: shard as u32,
            row: id - self.shard_starts[shard],
        }
    }

    /// Every sample of the epoch in order. Memory grows with the dataset: for tests and
    /// small data; the reader walks windows instead.
    pub fn materialize(&self) -> Vec<SampleRef> {
        (0..self.windows())
            .flat_map(|w| self.window(w).samples())
            .collect()
    }
}

/// Rows `[first, first + n)` of a shard of `m` rows in stripe `j` of `k`: near-equal cuts.
fn stripe(m: u64, k: u64, j: u64) -> (u64, u64) {
    let cut = |j: u64| ((m as u128 * j as u128) / k as u128) as u64;
    (cut(j), cut(j + 1) - cut(j))
}

/// Positions `[start, end)` of the global order that rank `rank` of `ranks` reads.
///
/// The epoch is cut into `ranks` contiguous slices; when it does not divide evenly the
/// first `total % ranks` ranks get one sample more. Slices are disjoint and cover the
/// epoch: nothing is repeated or dropped. Lockstep training should stop every rank after
/// the shortest rank's batches (`total / ranks` samples).
pub fn rank_range(total: u64, rank: u64, ranks: u64) -> (u64, u64) {
    assert!(ranks > 0 && rank < ranks, "rank {rank} of {ranks}");
    let base = total / ranks;
    let extra = total % ranks;
    let start = rank * base + rank.min(extra);
    let len = base + u64::from(rank < extra);
    (start, start + len)
}

/// Mixes the parts of a stream's identity into one 64-bit key.
fn key(seed: u64, epoch: u64, stream: u64, index: u64) -> u64 {
    let mut h = splitmix(seed ^ 0x6a09_e667_f3bc_c908);
    h = splitmix(h ^ epoch);
    h = splitmix(h ^ stream);
    splitmix(h ^ index)
}

/// The first word of the SplitMix64 stream seeded with `z`: a keyed mix of one word.
fn splitmix(z: u64) -> u64 {
    Rng::new(z).next_u64()
}

/// Fisher–Yates.
fn shuffle<T>(items: &mut [T], rng: &mut Rng) {
    for i in (1..items.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// A keyed bijection of `[0, n)`: a balanced Feistel network over the smallest even
/// number of bits that holds `n`, with cycle walking. O(1) memory for any `n`.
struct Feistel {
    n: u64,
    half_bits: u32,
    keys: [u64; 4],
}

impl Feistel {
    fn new(n: u64, key: u64) -> Self {
        let bits = (64 - n.saturating_sub(1).leading_zeros()).max(2);
        let half_bits = bits.div_ceil(2);
        let mut rng = Rng::new(key);
        Self {
            n,
            half_bits,
            keys: std::array::from_fn(|_| rng.next_u64()),
        }
    }

    fn round(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let (mut l, mut r) = (x >> self.half_bits, x & mask);
        for k in self.keys {
            let f = splitmix(r ^ k) & mask;
            (l, r) = (r, l ^ f);
        }
        (l << self.half_bits) | r
    }

    fn apply(&self, mut x: u64) -> u64 {
        // Walking stays inside [0, n) because the network permutes [0, 4^half_bits) and
        // every cycle through x < n returns below n; at most ~4 steps on average.
        loop {
            x = self.round(x);
            if x < self.n {
                return x;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feistel_is_a_permutation() {
        for n in [1u64, 2, 3, 5, 16, 17, 1000, 4097] {
            let f = Feistel::new(n, 42);
            let mut seen = vec![false; n as usize];
            for i in 0..n {
                let j = f.apply(i) as usize;
                assert!(!seen[j]);
                seen[j] = true;
            }
        }
    }

    #[test]
    fn orders_are_fixed_forever() {
        // A resume across versions needs the same order: pin one.
        let spec = OrderSpec {
            order: Order::Window,
            window: 4,
            spread: 2,
        };
        let plan = EpochPlan::new(spec, 7, 3, &[3, 5, 2]);
        let got: Vec<(u32, u64)> = plan
            .materialize()
            .iter()
            .map(|s| (s.shard, s.row))
            .collect();
        let pinned = [
            (1, 0),
            (1, 1),
            (2, 0),
            (1, 4),
            (2, 1),
            (1, 3),
            (1, 2),
            (0, 2),
            (0, 1),
            (0, 0),
        ];
        assert_eq!(got, pinned);
        let again: Vec<(u32, u64)> = EpochPlan::new(spec, 7, 3, &[3, 5, 2])
            .materialize()
            .iter()
            .map(|s| (s.shard, s.row))
            .collect();
        assert_eq!(got, again);
    }

    #[test]
    fn rank_ranges_tile() {
        assert_eq!(rank_range(10, 0, 3), (0, 4));
        assert_eq!(rank_range(10, 1, 3), (4, 7));
        assert_eq!(rank_range(10, 2, 3), (7, 10));
        assert_eq!(rank_range(2, 2, 3), (2, 2));
    }
}
