//! A training checkpoint in one file, written atomically: the loop's state as JSON, the
//! model's and the optimizer's tensors as burn records (raw bytes, so f32 values come back
//! bit for bit), and a checksum over all of it.
//!
//! Layout: the 8-byte magic `FRUGALCK`, then three sections each preceded by its length as
//! a little-endian u64 (state JSON, model record, optimizer record), then the xxh3-64 of
//! everything before it, little-endian.

use std::path::Path;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Result, TrainError};
use crate::scaler::LossScaler;

const MAGIC: &[u8; 8] = b"FRUGALCK";

/// Running sums of the training metrics since the last train record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LogWindow {
    /// Sum over samples of the loss.
    pub loss_sum: f64,
    /// Samples classified right.
    pub correct: u64,
    /// Samples seen.
    pub samples: u64,
    /// Whether the task reports accuracy.
    pub has_accuracy: bool,
    /// The steps' fixed-point solves.
    #[serde(default)]
    pub solves: crate::metrics::Solves,
}

/// Everything of the loop's state that is not a tensor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    /// Identity of the settings that shape the result; a resume with other settings is
    /// refused.
    pub fingerprint: String,
    /// Optimizer steps completed.
    pub step: u64,
    /// The epoch being read.
    pub epoch: u64,
    /// Samples of that epoch already consumed.
    pub consumed: u64,
    /// Loss scaler (f16).
    pub scaler: LossScaler,
    /// Metrics accumulated since the last train record.
    pub window: LogWindow,
    /// Training samples processed in all.
    pub samples_total: u64,
    /// Seconds spent training (not evaluating) before this checkpoint.
    pub train_seconds: f64,
    /// The random streams: every draw (initialization, dropout, data order) is a pure
    /// function of this seed and the step, epoch and sample counters above.
    pub seed: u64,
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Snapshot {
    /// Loop state.
    pub state: LoopState,
    /// The model's burn record.
    pub model: Vec<u8>,
    /// The optimizer's burn record.
    pub optimizer: Vec<u8>,
}

impl Snapshot {
    /// Writes the checkpoint to `path` through a temporary file, synced, then renamed.
    pub fn save(&self, path: &Path) -> Result<()> {
        frugal_store::atomic_write(path, &self.encode()).map_err(TrainError::Store)
    }

    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(&self.state).expect("the state serializes");
        let mut bytes =
            Vec::with_capacity(40 + json.len() + self.model.len() + self.optimizer.len());
        bytes.extend_from_slice(MAGIC);
        for section in [&json, &self.model, &self.optimizer] {
            bytes.extend_from_slice(&(section.len() as u64).to_le_bytes());
            bytes.extend_from_slice(section);
        }
        let sum = xxh3_64(&bytes);
        bytes.extend_from_slice(&sum.to_le_bytes());
        bytes
    }

    /// Reads and checks a checkpoint.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
        let bad = |what: &str| TrainError::Snapshot {
            path: path.to_owned(),
            message: what.to_owned(),
        };
        if bytes.len() < 16 || &bytes[..8] != MAGIC {
            return Err(bad("is not a frugal training checkpoint"));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 8);
        if xxh3_64(body).to_le_bytes() != sum {
            return Err(bad(
                "is damaged (checksum mismatch); delete it to start afresh, or restore it",
            ));
        }
        let mut rest = &body[8..];
        let mut sections = Vec::with_capacity(3);
        for _ in 0..3 {
            let len = rest
                .get(..8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
                .ok_or_else(|| bad("is truncated"))?;
            let section = rest.get(8..8 + len).ok_or_else(|| bad("is truncated"))?;
            sections.push(section.to_vec());
            rest = &rest[8 + len..];
        }
        if !rest.is_empty() {
            return Err(bad("has bytes after its last section"));
        }
        let optimizer = sections.pop().expect("three sections");
        let model = sections.pop().expect("three sections");
        let state = serde_json::from_slice(&sections[0])
            .map_err(|e| bad(&format!("holds an unreadable state: {e}")))?;
        Ok(Self {
            state,
            model,
            optimizer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            state: LoopState {
                fingerprint: "abc".into(),
                step: 7,
                epoch: 1,
                consumed: 256,
                scaler: LossScaler::default(),
                // A window part-way through, with the solves of an equilibrium task.
                window: LogWindow {
                    loss_sum: 12.5,
                    correct: 40,
                    samples: 64,
                    has_accuracy: true,
                    solves: crate::metrics::Solves {
                        count: 6,
                        iterations: 130,
                        max_iterations: 50,
                        unconverged: 1,
                    },
                },
                samples_total: 1000,
                train_seconds: 1.5,
                seed: 3,
            },
            model: vec![1, 2, 3],
            optimizer: vec![4; 10],
        }
    }

    #[test]
    fn round_trips_and_rejects_any_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.bin");
        let s = snapshot();
        s.save(&path).unwrap();
        let back = Snapshot::load(&path).unwrap();
        assert_eq!(back.state, s.state);
        assert_eq!(back.model, s.model);
        assert_eq!(back.optimizer, s.optimizer);
        let good = std::fs::read(&path).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            assert!(Snapshot::load(&path).is_err(), "flip at {i} accepted");
        }
        for len in 0..good.len() {
            std::fs::write(&path, &good[..len]).unwrap();
            assert!(
                Snapshot::load(&path).is_err(),
                "truncation to {len} accepted"
            );
        }
    }
}
