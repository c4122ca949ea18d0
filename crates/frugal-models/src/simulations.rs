//! The particles dataset, as `frugal nbody generate` writes it: shard `i` is simulation
//! `i`, one row per recorded state — positions, velocities and accelerations (f32,
//! particle-major, `[particles, 3]` each) and which simulation and recorded step it is
//! (layout in docs/format.md).

use frugal_sim::{RecordError, Recording};
use frugal_store::{
    Column, DType, Dataset, Order, OrderSpec, Schema, ShardBuffer, StoreError, StreamOptions,
};
use frugal_train::{Result, TrainError};

/// The dataset's columns for `particles` particles.
pub fn schema(particles: usize) -> Schema {
    Schema {
        columns: vec![
            Column::new("pos", DType::F32, [particles, 3]),
            Column::new("vel", DType::F32, [particles, 3]),
            Column::new("acc", DType::F32, [particles, 3]),
            Column::new("sim", DType::U32, []),
            Column::new("step", DType::U32, []),
        ],
    }
}

/// One row: recorded state `step` of simulation `index`, its three arrays as bytes.
pub fn push_state(
    buffer: &mut ShardBuffer,
    index: u64,
    step: u64,
    [pos, vel, acc]: [&[u8]; 3],
) -> frugal_store::Result<()> {
    let (sim, step) = ((index as u32).to_le_bytes(), (step as u32).to_le_bytes());
    buffer.push_rows(1, &[pos, vel, acc, &sim, &step])
}

/// What stops a simulation being recorded: its settings, or the dataset.
enum SimError {
    Record(RecordError),
    Store(StoreError),
}

impl From<RecordError> for SimError {
    fn from(e: RecordError) -> Self {
        Self::Record(e)
    }
}

/// Runs simulation `index` of `r` on this thread, its states into `buffer`.
pub fn simulate(r: &Recording, index: u64, buffer: &mut ShardBuffer) -> frugal_store::Result<()> {
    r.record::<SimError>(index, &mut || Ok(()), &mut |s| {
        push_state(buffer, index, s.step, [s.pos, s.vel, s.acc]).map_err(SimError::Store)
    })
    .map_err(|e| match e {
        SimError::Record(e) => StoreError::Setting {
            setting: "simulation",
            value: index.to_string(),
            problem: e.to_string(),
        },
        SimError::Store(e) => e,
    })
}

/// Writes simulation `index`'s states into `buffer` from `data`, the bytes a worker
/// recorded (every state's positions, velocities and accelerations in turn); refuses
/// data of the wrong size.
pub fn push_recorded(
    r: &Recording,
    index: u64,
    data: &[u8],
    buffer: &mut ShardBuffer,
) -> frugal_store::Result<()> {
    if data.len() != r.simulation_bytes() {
        return Err(StoreError::Rows(format!(
            "simulation {index}: {} bytes of states, not {}",
            data.len(),
            r.simulation_bytes()
        )));
    }
    let part = r.particles * 12;
    for (step, state) in data.chunks_exact(3 * part).enumerate() {
        let (pos, rest) = state.split_at(part);
        let (vel, acc) = rest.split_at(part);
        push_state(buffer, index, step as u64, [pos, vel, acc])?;
    }
    Ok(())
}

/// The recorded positions and velocities of one simulation, every state in time order:
/// `[states × particles × 3]` each.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// Positions.
    pub pos: Vec<f32>,
    /// Velocities.
    pub vel: Vec<f32>,
}

impl Recorded {
    /// Shard `sim` of a particles dataset (one shard per simulation), read in order.
    pub fn read(all: &Dataset, sim: usize) -> Result<Self> {
        let one = all.select_shards(sim..sim + 1)?;
        let n = one.len() as usize;
        let spec = OrderSpec {
            order: Order::Sequential,
            window: n as u64,
            spread: 1,
        };
        let (mut pos, mut vel) = (Vec::new(), Vec::new());
        for batch in one.stream(StreamOptions::new(spec, 0, 0, n))? {
            let batch = batch?;
            for (name, into) in [("pos", &mut pos), ("vel", &mut vel)] {
                let col = batch
                    .column(name)
                    .and_then(|c| c.as_slice::<f32>())
                    .ok_or_else(|| TrainError::Column {
                        column: name.into(),
                        problem: format!("of simulation {sim} is missing or not f32"),
                    })?;
                into.extend_from_slice(col);
            }
        }
        Ok(Self { pos, vel })
    }
}
