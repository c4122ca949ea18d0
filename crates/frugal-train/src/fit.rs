//! Planning a run before it starts, for any [`Task`]: the [`Planner`] predicts its peak
//! memory at the configured settings or others, and [`fit`] refuses a run over a budget,
//! or finds checkpointing, micro-batch and precision that fit it.

use burn::module::Module;
use burn::tensor::Device;
use serde::Serialize;

use crate::plan::{MemoryPlan, PlanInput, Profiles, first_batch, max_batch};
use crate::precision::compute_copy;
use crate::trainer::{TrainData, TrainSpec, data_bytes, init_seeded, run_step};
use crate::{Precision, Result, StepInput, Task, TrainError};

/// The settings a memory plan depends on, which [`fit`] may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Fit {
    /// Compute precision.
    pub precision: Precision,
    /// Checkpoint segments; `None` keeps every activation.
    pub segments: Option<usize>,
    /// Samples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
}

impl Fit {
    /// The settings of `spec`.
    pub fn of(spec: &TrainSpec) -> Self {
        Self {
            precision: spec.precision,
            segments: spec.segments,
            batch_size: spec.batch_size,
            grad_accum: spec.grad_accum,
        }
    }

    /// The settings `plan` was made for.
    pub fn of_plan(plan: &MemoryPlan) -> Self {
        Self {
            precision: plan.precision,
            segments: plan.segments,
            batch_size: plan.batch,
            grad_accum: plan.grad_accum,
        }
    }

    /// Sets these settings in `spec`.
    pub fn apply(&self, spec: &mut TrainSpec) {
        spec.precision = self.precision;
        spec.segments = self.segments;
        spec.batch_size = self.batch_size;
        spec.grad_accum = self.grad_accum;
    }
}

/// Memory plans of one run (a task, its data, its loop settings) at its own settings or
/// others. The task's activations are profiled with real steps on the host, once per
/// precision and checkpointing, and reused for every batch size.
pub struct Planner<'a, T: Task> {
    task: &'a T,
    data: &'a TrainData,
    spec: &'a TrainSpec,
    device: Device,
    params: u64,
    runtime_bytes: u64,
    profiles: Vec<Profiles>,
}

impl<'a, T: Task> Planner<'a, T> {
    /// A planner for `task` trained on `data` with `spec`, profiling on `device`. What is
    /// planned is the host's memory, counted by the allocator; on a GPU device that leaves
    /// out what the device holds ([`crate::plan::DevicePlan`] predicts that).
    pub fn new(
        task: &'a T,
        data: &'a TrainData,
        spec: &'a TrainSpec,
        device: &Device,
    ) -> Result<Self> {
        // One tiny step first touches the code and starts the threads a step needs; what
        // is resident then, less the heap, is the runtime. Measured before the larger
        // profiling steps, whose freed memory the allocator may keep.
        let one = first_batch(&data.train, 1)?;
        let ad = device.clone().autodiff();
        let model = compute_copy(&init_seeded(task, 0, &ad), spec.precision);
        let input = StepInput {
            device: &ad,
            precision: spec.precision,
            segments: spec.segments,
            seed: 0,
        };
        run_step(task, &model, &one, input, 1.0)?;
        let params = model.num_params() as u64;
        drop((one, model));
        crate::memory::release_free_memory();
        let rss = frugal_hw::MemoryMeter::new()
            .sample()
            .map_or(0, |s| s.rss_bytes);
        Ok(Self {
            task,
            data,
            spec,
            device: device.clone(),
            params,
            // Code, libraries, thread stacks and the allocator's own bookkeeping.
            runtime_bytes: rss.saturating_sub(crate::memory::heap_live()),
            profiles: Vec::new(),
        })
    }

    /// The task's parameter count.
    pub fn params(&self) -> u64 {
        self.params
    }

    /// The plan of the run as configured.
    pub fn configured(&mut self) -> Result<MemoryPlan> {
        self.plan(Fit::of(self.spec))
    }

    /// The plan of the run with `fit`'s settings.
    pub fn plan(&mut self, fit: Fit) -> Result<MemoryPlan> {
        self.profile(fit.precision, fit.segments)?;
        self.profile(fit.precision, None)?;
        Ok(self.plan_profiled(fit))
    }

    /// The largest micro-batch that fits `budget` with the other settings of `fit`, or
    /// `None` if not even one sample does.
    pub fn max_batch(&mut self, fit: Fit, budget: u64) -> Result<Option<usize>> {
        self.profile(fit.precision, fit.segments)?;
        self.profile(fit.precision, None)?;
        let limit = self.data.train.len() as usize;
        Ok(max_batch(limit, budget, |b| {
            self.plan_profiled(Fit {
                batch_size: b,
                ..fit
            })
            .predicted_peak_bytes
        }))
    }

    fn profile(&mut self, precision: Precision, segments: Option<usize>) -> Result<()> {
        if !self
            .profiles
            .iter()
            .any(|p| p.precision == precision && p.segments == segments)
        {
            let p = Profiles::measure(
                self.task,
                &self.data.train,
                &self.device,
                precision,
                segments,
                self.params,
                self.spec.batch_size,
            )?;
            self.profiles.push(p);
        }
        Ok(())
    }

    fn plan_profiled(&self, fit: Fit) -> MemoryPlan {
        let find = |s: Option<usize>| {
            self.profiles
                .iter()
                .find(|p| p.precision == fit.precision && p.segments == s)
                .expect("profiled before planning")
        };
        let input = PlanInput {
            params: self.params,
            batch: fit.batch_size,
            grad_accum: fit.grad_accum,
            data_bytes: data_bytes(
                self.data,
                self.spec.order,
                fit.batch_size,
                self.task.eval_batch(fit.batch_size),
            ),
            runtime_bytes: self.runtime_bytes,
        };
        MemoryPlan::new(&input, find(fit.segments), find(None))
    }
}

/// What [`fit`] decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Fitted {
    /// The plan of the settings to train with.
    pub plan: MemoryPlan,
    /// Whether they differ from the configured ones.
    pub changed: bool,
}

/// Checks the planned peak of the configured run against `budget`. Over it, without
/// `adjust`, the run is refused ([`TrainError::OverBudget`]); with `adjust`, the cheapest
/// changes that fit are chosen: checkpointing first (results unchanged), then a smaller
/// micro-batch with accumulation keeping the effective batch (changed by rounding only),
/// then bf16 (changed arithmetic).
pub fn fit<T: Task>(planner: &mut Planner<'_, T>, budget: u64, adjust: bool) -> Result<Fitted> {
    let configured = planner.configured()?;
    if configured.predicted_peak_bytes <= budget {
        return Ok(Fitted {
            plan: configured,
            changed: false,
        });
    }
    let over = |plan: MemoryPlan, searched: bool| TrainError::OverBudget {
        plan: Box::new(plan),
        budget_bytes: budget,
        searched,
    };
    if !adjust {
        return Err(over(configured, false));
    }
    let now = Fit::of_plan(&configured);
    let blocks = planner.task.blocks();
    let segments = now
        .segments
        .or((blocks > 1).then(|| planner.task.checkpoint_segments()));
    let effective = now.batch_size * now.grad_accum;
    let mut precisions = vec![now.precision];
    if now.precision == Precision::F32 {
        precisions.push(Precision::Bf16);
    }
    for precision in precisions {
        let whole = Fit {
            precision,
            segments,
            ..now
        };
        let plan = planner.plan(whole)?;
        if plan.predicted_peak_bytes <= budget {
            return Ok(Fitted {
                plan,
                changed: true,
            });
        }
        // The largest micro-batch dividing the effective batch that fits.
        let accumulating = Fit {
            grad_accum: 2,
            ..whole
        };
        if let Some(most) = planner.max_batch(accumulating, budget)? {
            let micro = (1..=most.min(effective))
                .rev()
                .find(|m| effective.is_multiple_of(*m))
                .unwrap_or(1);
            let plan = planner.plan(Fit {
                batch_size: micro,
                grad_accum: effective / micro,
                ..whole
            })?;
            if plan.predicted_peak_bytes <= budget {
                return Ok(Fitted {
                    plan,
                    changed: true,
                });
            }
        }
    }
    Err(over(configured, true))
}
