use serde::{Deserialize, Serialize};

/// The SplitMix64 output function: a bijection on 64-bit words that scatters nearby inputs
/// (consecutive seeds, consecutive ids) across the whole range.
pub(crate) fn mix(z: u64) -> u64 {
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// xoshiro256++ (Blackman and Vigna): every random draw of a run comes from one of these.
///
/// Its whole state is four words that serialize with the run, so a checkpoint resumes the
/// exact stream. Seeding runs SplitMix64 over the seed, as the generator's authors
/// recommend, so seeds 0, 1, 2… give unrelated streams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A stream from `seed`.
    pub fn new(seed: u64) -> Self {
        let mut state = seed;
        let s = std::array::from_fn(|_| {
            state = state.wrapping_add(GOLDEN);
            mix(state)
        });
        // SplitMix64 is a bijection of distinct inputs, so at most one word can be zero and
        // the all-zero state (xoshiro's one fixed point) cannot arise.
        Self { s }
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
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// Uniform over `0..n`, without the bias of a plain modulo (Lemire's method).
    ///
    /// # Panics
    /// If `n` is zero.
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "Rng::below(0)");
        let n = n as u64;
        let mut m = u128::from(self.next_u64()) * u128::from(n);
        if (m as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = u128::from(self.next_u64()) * u128::from(n);
            }
        }
        (m >> 64) as usize
    }
}

/// The evaluation seed of candidate `id` in a run seeded with `run_seed`: a function of the
/// two alone, so it does not matter which worker evaluates the candidate or when. Distinct
/// ids give distinct seeds, since both steps are bijections.
pub(crate) fn candidate_seed(run_seed: u64, id: u64) -> u64 {
    mix(mix(run_seed) ^ id.wrapping_mul(GOLDEN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_stream() {
        // The reference implementation seeded with s = [1, 2, 3, 4].
        let mut r = Rng { s: [1, 2, 3, 4] };
        let first: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(first, [41_943_041, 58_720_359, 3_588_806_011_781_223]);
    }

    #[test]
    fn uniform_is_in_range_and_centred() {
        let mut r = Rng::new(3);
        let draws: Vec<f64> = (0..100_000).map(|_| r.uniform()).collect();
        assert!(draws.iter().all(|&u| (0.0..1.0).contains(&u)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.5).abs() < 0.005, "{mean}");
    }

    #[test]
    fn below_covers_its_range_evenly() {
        let mut r = Rng::new(11);
        let mut counts = [0usize; 7];
        for _ in 0..70_000 {
            counts[r.below(7)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn seeds_give_different_streams() {
        assert_ne!(Rng::new(0).next_u64(), Rng::new(1).next_u64());
        assert_ne!(candidate_seed(0, 1), candidate_seed(1, 0));
        assert_ne!(candidate_seed(5, 1), candidate_seed(5, 2));
    }
}
