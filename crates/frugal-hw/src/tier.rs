//! Compute tiers: a coarse answer to "what class of machine is this?", decided by GPU
//! memory and count, then checked against the host memory that must feed the GPUs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A class of machine; each workload has a preset tuned for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Tier {
    /// No usable GPU: everything runs on the CPU.
    CpuOnly,
    /// A 6–12 GB GPU (RTX 3060, 4060, 2080 Ti).
    #[serde(rename = "TIER_1_COMMODITY")]
    Tier1Commodity,
    /// A 16–24 GB GPU (RTX 3090, 4090, A5000).
    #[serde(rename = "TIER_2_PROSUMER")]
    Tier2Prosumer,
    /// A 40–80 GB GPU (A100, A6000, H100).
    #[serde(rename = "TIER_3_HIGH_END")]
    Tier3HighEnd,
    /// Four or more high-end GPUs, or eight or more of any size.
    #[serde(rename = "TIER_4_DATACENTER")]
    Tier4Datacenter,
}

impl Tier {
    /// All tiers, smallest first.
    pub const ALL: [Tier; 5] = [
        Tier::CpuOnly,
        Tier::Tier1Commodity,
        Tier::Tier2Prosumer,
        Tier::Tier3HighEnd,
        Tier::Tier4Datacenter,
    ];

    /// The name used in reports and JSON: `CPU_ONLY`, `TIER_1_COMMODITY`, …
    pub fn name(self) -> &'static str {
        match self {
            Tier::CpuOnly => "CPU_ONLY",
            Tier::Tier1Commodity => "TIER_1_COMMODITY",
            Tier::Tier2Prosumer => "TIER_2_PROSUMER",
            Tier::Tier3HighEnd => "TIER_3_HIGH_END",
            Tier::Tier4Datacenter => "TIER_4_DATACENTER",
        }
    }

    /// The file stem of this tier's presets: `cpu_only`, `tier_1_commodity`, …
    pub fn file_stem(self) -> String {
        self.name().to_ascii_lowercase()
    }

    /// Host memory a machine of this tier needs to stage data for its GPUs: as much as
    /// the tier's smallest GPU configuration holds. Below it, the GPU would wait on the
    /// host and the tier's preset would not fit.
    pub fn min_host_bytes(self) -> u64 {
        match self {
            Tier::CpuOnly => 0,
            Tier::Tier1Commodity => TIER_1_GPU_BYTES,
            Tier::Tier2Prosumer => TIER_2_GPU_BYTES,
            Tier::Tier3HighEnd => TIER_3_GPU_BYTES,
            Tier::Tier4Datacenter => 4 * TIER_3_GPU_BYTES,
        }
    }

    fn below(self) -> Tier {
        match self {
            Tier::CpuOnly | Tier::Tier1Commodity => Tier::CpuOnly,
            Tier::Tier2Prosumer => Tier::Tier1Commodity,
            Tier::Tier3HighEnd => Tier::Tier2Prosumer,
            Tier::Tier4Datacenter => Tier::Tier3HighEnd,
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Tier {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s) || t.file_stem() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Tier::ALL.iter().map(|t| t.name()).collect();
                format!("unknown tier `{s}`; expected one of {}", names.join(", "))
            })
    }
}

// Vendors sell GPU memory in decimal-looking sizes that NVML reports in binary units
// (a "16 GB" card has 15.99 GiB), so thresholds are decimal GB with room below.
const GB: u64 = 1_000_000_000;
const TIER_1_GPU_BYTES: u64 = 6 * GB;
const TIER_2_GPU_BYTES: u64 = 16 * GB;
const TIER_3_GPU_BYTES: u64 = 40 * GB;

/// What the tier rules look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierInput {
    /// The host memory budget (physical RAM or the cgroup limit, whichever is smaller).
    pub host_budget_bytes: u64,
    /// Total memory of each visible GPU.
    pub gpu_memory_bytes: Vec<u64>,
}

/// A tier and the rule that decided it, in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TierDecision {
    /// The tier.
    pub tier: Tier,
    /// Why: the rule that matched, with the numbers it compared.
    pub rule: String,
}

fn gb(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / GB as f64)
}

/// Applies the tier rules. GPU count and memory pick a tier; a host memory budget
/// below that tier's [`Tier::min_host_bytes`] moves it down until it fits.
pub fn decide(input: &TierInput) -> TierDecision {
    let gpus = &input.gpu_memory_bytes;
    let largest = gpus.iter().copied().max().unwrap_or(0);
    let high_end = gpus.iter().filter(|&&m| m >= TIER_3_GPU_BYTES).count();
    let (mut tier, mut rule) = if gpus.is_empty() {
        (Tier::CpuOnly, "no NVIDIA GPU found".to_owned())
    } else if gpus.len() >= 8 {
        (
            Tier::Tier4Datacenter,
            format!("{} GPUs (8 or more)", gpus.len()),
        )
    } else if high_end >= 4 {
        (
            Tier::Tier4Datacenter,
            format!(
                "{high_end} GPUs of at least {} (4 or more high-end)",
                gb(TIER_3_GPU_BYTES)
            ),
        )
    } else if largest >= TIER_3_GPU_BYTES {
        (
            Tier::Tier3HighEnd,
            format!(
                "largest GPU has {} (at least {})",
                gb(largest),
                gb(TIER_3_GPU_BYTES)
            ),
        )
    } else if largest >= TIER_2_GPU_BYTES {
        (
            Tier::Tier2Prosumer,
            format!(
                "largest GPU has {} (at least {})",
                gb(largest),
                gb(TIER_2_GPU_BYTES)
            ),
        )
    } else if largest >= TIER_1_GPU_BYTES {
        (
            Tier::Tier1Commodity,
            format!(
                "largest GPU has {} (at least {})",
                gb(largest),
                gb(TIER_1_GPU_BYTES)
            ),
        )
    } else {
        (
            Tier::CpuOnly,
            format!(
                "largest GPU has {}, less than the {} a tier needs",
                gb(largest),
                gb(TIER_1_GPU_BYTES)
            ),
        )
    };
    if input.host_budget_bytes < tier.min_host_bytes() {
        let wanted = tier;
        while input.host_budget_bytes < tier.min_host_bytes() {
            tier = tier.below();
        }
        rule = format!(
            "{rule} would be {wanted}, but the host memory budget of {} is under the {} it needs",
            gb(input.host_budget_bytes),
            gb(wanted.min_host_bytes()),
        );
    }
    TierDecision { tier, rule }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    #[test]
    fn tier_rules_table() {
        // (case, host budget, GPU memory totals as NVML reports them, expected tier)
        let cases: &[(&str, u64, &[u64], Tier)] = &[
            ("no GPU", 32 * GIB, &[], Tier::CpuOnly),
            ("no GPU, tiny cgroup", GIB, &[], Tier::CpuOnly),
            ("one 4 GB GPU", 16 * GIB, &[4096 * MIB], Tier::CpuOnly),
            (
                "one 8 GB GPU",
                32 * GIB,
                &[8192 * MIB],
                Tier::Tier1Commodity,
            ),
            (
                "one 12 GB GPU",
                32 * GIB,
                &[12288 * MIB],
                Tier::Tier1Commodity,
            ),
            (
                "one 16 GB GPU reporting 15.99 GiB",
                32 * GIB,
                &[16376 * MIB],
                Tier::Tier2Prosumer,
            ),
            (
                "one 24 GB GPU",
                64 * GIB,
                &[24564 * MIB],
                Tier::Tier2Prosumer,
            ),
            (
                "one 40 GB A100",
                128 * GIB,
                &[40960 * MIB],
                Tier::Tier3HighEnd,
            ),
            (
                "one 80 GB H100",
                128 * GIB,
                &[81559 * MIB],
                Tier::Tier3HighEnd,
            ),
            (
                "two 80 GB GPUs",
                256 * GIB,
                &[81559 * MIB; 2],
                Tier::Tier3HighEnd,
            ),
            (
                "four 80 GB GPUs",
                512 * GIB,
                &[81559 * MIB; 4],
                Tier::Tier4Datacenter,
            ),
            (
                "four 24 GB GPUs",
                256 * GIB,
                &[24564 * MIB; 4],
                Tier::Tier2Prosumer,
            ),
            (
                "eight 80 GB GPUs",
                2048 * GIB,
                &[81920 * MIB; 8],
                Tier::Tier4Datacenter,
            ),
            (
                "eight 12 GB GPUs",
                512 * GIB,
                &[12288 * MIB; 8],
                Tier::Tier4Datacenter,
            ),
            // A cgroup limit below physical RAM is the budget, and it caps the tier.
            (
                "24 GB GPU in a 12 GiB cgroup",
                12 * GIB,
                &[24564 * MIB],
                Tier::Tier1Commodity,
            ),
            (
                "80 GB GPU in a 4 GiB cgroup",
                4 * GIB,
                &[81559 * MIB],
                Tier::CpuOnly,
            ),
            (
                "eight 80 GB GPUs in a 64 GiB cgroup",
                64 * GIB,
                &[81920 * MIB; 8],
                Tier::Tier3HighEnd,
            ),
        ];
        for &(case, host, gpus, want) in cases {
            let got = decide(&TierInput {
                host_budget_bytes: host,
                gpu_memory_bytes: gpus.to_vec(),
            });
            assert_eq!(got.tier, want, "{case}: {}", got.rule);
            assert!(!got.rule.is_empty());
        }
    }

    #[test]
    fn the_rule_says_why() {
        let d = decide(&TierInput {
            host_budget_bytes: 8 * GIB,
            gpu_memory_bytes: vec![],
        });
        assert_eq!(d.rule, "no NVIDIA GPU found");
        let d = decide(&TierInput {
            host_budget_bytes: 12 * GIB,
            gpu_memory_bytes: vec![24564 * MIB],
        });
        assert!(
            d.rule.contains("TIER_2_PROSUMER") && d.rule.contains("12.9 GB"),
            "{}",
            d.rule
        );
        let d = decide(&TierInput {
            host_budget_bytes: 1 << 40,
            gpu_memory_bytes: vec![81920 * MIB; 8],
        });
        assert_eq!(d.rule, "8 GPUs (8 or more)");
    }

    #[test]
    fn names_round_trip() {
        for t in Tier::ALL {
            assert_eq!(t.name().parse::<Tier>(), Ok(t));
            assert_eq!(t.file_stem().parse::<Tier>(), Ok(t));
            assert_eq!(
                serde_json::to_string(&t).unwrap(),
                format!("\"{}\"", t.name())
            );
        }
        assert!("TIER_9".parse::<Tier>().unwrap_err().contains("CPU_ONLY"));
    }
}
