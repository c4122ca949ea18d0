//! The seeded random streams of frugal.
//!
//! Every random choice frugal makes — a synthetic dataset's values, an epoch's order, a
//! simulation's initial conditions, an evolutionary run's breeding — comes from one of the
//! two generators here, seeded from the run's configuration. They are written out rather
//! than taken from a general-purpose crate because a stream is part of a file format: a
//! dataset generated today must regenerate to the same bytes, and a run checkpointed today
//! must resume bit for bit, after any dependency upgrade. The golden-value tests below pin
//! both streams.
//!
//! - [`SplitMix64`]: one word of state, fast to seed anywhere (one per simulation, one per
//!   shard), and [`mix64`], its output function, for hashing identities into seeds.
//! - [`Xoshiro256pp`]: four words of state that serialize with a run, for long streams.
//!
//! ```
//! use frugal_rand::{SplitMix64, Xoshiro256pp};
//!
//! let mut a = SplitMix64::new(7);
//! let mut b = SplitMix64::new(7);
//! assert_eq!(a.next_u64(), b.next_u64());
//! let u = a.uniform();
//! assert!((0.0..1.0).contains(&u));
//!
//! let mut x = Xoshiro256pp::new(7);
//! let saved = serde_json::to_string(&x).unwrap();
//! let first = x.below(10);
//! let mut resumed: Xoshiro256pp = serde_json::from_str(&saved).unwrap();
//! assert_eq!(resumed.below(10), first);
//! ```

use serde::{Deserialize, Serialize};

/// The increment of SplitMix64's state: 2⁶⁴ divided by the golden ratio, odd.
pub const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function: a bijection on 64-bit words that scatters nearby inputs
/// (consecutive seeds, consecutive ids) across the whole range.
pub fn mix64(z: u64) -> u64 {
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Uniform in `[0, 1)` from the top 53 bits of a word: every value a multiple of 2⁻⁵³.
fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// An unbiased draw from `0..n` by Lemire's multiply-and-reject: a word `w` gives
/// `⌊w·n / 2⁶⁴⌋` unless the low half of the product falls in the few values that would
/// favour some results, then the next word is tried.
fn below_with(n: u64, mut next: impl FnMut() -> u64) -> u64 {
    assert!(n > 0, "below(0): the range is empty");
    let threshold = n.wrapping_neg() % n;
    loop {
        let m = u128::from(next()) * u128::from(n);
        if (m as u64) >= threshold {
            return (m >> 64) as u64;
        }
    }
}

/// SplitMix64 (Steele, Lea and Flood): a counter stepped by [`GOLDEN_GAMMA`] and passed
/// through [`mix64`]. One word of state, so seeding one per simulation or per shard costs
/// nothing; statistically sound for the short streams it is used for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// The stream of `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
        mix64(self.0)
    }

    /// Uniform in `[0, 1)`, 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        unit(self.next_u64())
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform over `0..n`, without the bias of a plain modulo.
    ///
    /// # Panics
    /// If `n` is zero.
    pub fn below(&mut self, n: u64) -> u64 {
        below_with(n, || self.next_u64())
    }
}

/// xoshiro256++ (Blackman and Vigna): the generator of long streams whose state is saved
/// with a run.
///
/// Its whole state is four words that serialize (as `{"s": [..]}`), so a checkpoint
/// resumes the exact stream. Seeding runs SplitMix64 over the seed, as the generator's
/// authors recommend, so seeds 0, 1, 2… give unrelated streams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xoshiro256pp {
    s: [u64; 4],
}

impl Xoshiro256pp {
    /// The stream of `seed`.
    pub fn new(seed: u64) -> Self {
        let mut seeder = SplitMix64::new(seed);
        // SplitMix64 is a bijection of distinct inputs, so at most one word can be zero and
        // the all-zero state (xoshiro's one fixed point) cannot arise.
        Self {
            s: std::array::from_fn(|_| seeder.next_u64()),
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let [s0, s1, s2, s3] = &mut self.s;
        let result = s0.wrapping_add(*s3).rotate_left(23).wrapping_add(*s0);
        let t = *s1 << 17;
        *s2 ^= *s0;
        *s3 ^= *s1;
        *s1 ^= *s2;
        *s0 ^= *s3;
        *s2 ^= t;
        *s3 = s3.rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)`, 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        unit(self.next_u64())
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// Uniform over `0..n`, without the bias of a plain modulo.
    ///
    /// # Panics
    /// If `n` is zero.
    pub fn below(&mut self, n: usize) -> usize {
        below_with(n as u64, || self.next_u64()) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first<const N: usize>(mut next: impl FnMut() -> u64) -> [u64; N] {
        std::array::from_fn(|_| next())
    }

    // Golden values: every dataset, order and run frugal has written depends on these
    // streams; a change here changes their bytes.
    #[test]
    fn splitmix_matches_the_reference_stream() {
        // Seed 0 is the published reference output of splitmix64.c.
        let mut r = SplitMix64::new(0);
        assert_eq!(
            first(|| r.next_u64()),
            [
                0xe220_a839_7b1d_cdaf,
                0x6e78_9e6a_a1b9_65f4,
                0x06c4_5d18_8009_454f,
                0xf88b_b8a8_724c_81ec
            ]
        );
        let mut r = SplitMix64::new(12345);
        assert_eq!(
            first(|| r.next_u64()),
            [
                0x2211_8258_a9d1_11a0,
                0x346e_dce5_f713_f8ed,
                0x1e9a_57bc_80e6_721d,
                0x2d16_0e7e_5c3f_42ca
            ]
        );
    }

    #[test]
    fn xoshiro_matches_the_reference_stream() {
        // The reference implementation's state [1, 2, 3, 4].
        let mut r = Xoshiro256pp { s: [1, 2, 3, 4] };
        assert_eq!(
            first(|| r.next_u64()),
            [41_943_041, 58_720_359, 3_588_806_011_781_223]
        );
        let mut r = Xoshiro256pp::new(0);
        assert_eq!(
            first(|| r.next_u64()),
            [
                0x5317_5d61_490b_23df,
                0x61da_6f3d_c380_d507,
                0x5c0f_df91_ec9a_7bfc,
                0x02ee_bf8c_3bbe_5e1a
            ]
        );
        let mut r = Xoshiro256pp::new(42);
        assert_eq!(
            first(|| r.next_u64()),
            [
                0xd076_4d4f_4476_689f,
                0x519e_4174_576f_3791,
                0xfbe0_7cfb_0c24_ed8c,
                0xb37d_9f60_0cd8_35b8
            ]
        );
    }

    #[test]
    fn mix_is_the_splitmix_output() {
        assert_eq!(
            mix64(GOLDEN_GAMMA),
            SplitMix64::new(0).next_u64(),
            "a stream's first word mixes seed + gamma"
        );
    }

    #[test]
    fn uniform_is_in_range_and_centred() {
        let mut a = SplitMix64::new(3);
        let mut b = Xoshiro256pp::new(3);
        for draws in [
            (0..100_000).map(|_| a.uniform()).collect::<Vec<_>>(),
            (0..100_000).map(|_| b.uniform()).collect(),
        ] {
            assert!(draws.iter().all(|&u| (0.0..1.0).contains(&u)));
            let mean = draws.iter().sum::<f64>() / draws.len() as f64;
            assert!((mean - 0.5).abs() < 0.005, "{mean}");
        }
    }

    #[test]
    fn below_covers_its_range_evenly() {
        let mut a = SplitMix64::new(11);
        let mut b = Xoshiro256pp::new(11);
        let (mut ca, mut cb) = ([0usize; 7], [0usize; 7]);
        for _ in 0..70_000 {
            ca[a.below(7) as usize] += 1;
            cb[b.below(7)] += 1;
        }
        for counts in [ca, cb] {
            assert!(
                counts.iter().all(|&c| (9_500..10_500).contains(&c)),
                "{counts:?}"
            );
        }
    }

    #[test]
    fn below_rejects_the_biased_words() {
        // n = 3: 2⁶⁴ mod 3 = 1, so one word value (a product whose low half is 0) would
        // favour a result and is redrawn; 5 · 3 = 15 keeps ⌊15 / 2⁶⁴⌋ = 0.
        let words = [0u64, 5];
        let mut i = 0;
        let got = below_with(3, || {
            i += 1;
            words[i - 1]
        });
        assert_eq!((got, i), (0, 2), "word 0 is rejected");
    }

    #[test]
    fn xoshiro_state_round_trips_through_json() {
        let mut r = Xoshiro256pp::new(9);
        r.next_u64();
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.starts_with("{\"s\":["), "{text}");
        let mut back: Xoshiro256pp = serde_json::from_str(&text).unwrap();
        assert_eq!(back.next_u64(), r.next_u64());
    }
}
