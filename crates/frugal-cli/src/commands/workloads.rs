//! `frugal train` and `frugal plan` on a configuration of any trainable workload: each
//! workload's setup, then the same training and planning for all.

use std::io::Write;

use anyhow::Result;

use super::{nbody, plan, setup, train};
use crate::args::{PlanArgs, TrainArgs};
use crate::config::AnyConfig;

/// `frugal train`.
pub(crate) fn train(args: TrainArgs, out: &mut dyn Write) -> Result<()> {
    match setup::load(&args.config)? {
        AnyConfig::Classifier(c) => train::train_setup(setup::classifier(&c)?, &args, out),
        AnyConfig::Particles(c) => train::train_setup(nbody::setup(&c)?, &args, out),
        AnyConfig::Eqprop(c) => train::train_setup(setup::eqprop(&c)?, &args, out),
        _ => unreachable!("setup::load refuses the other workloads"),
    }
}

/// `frugal plan`.
pub(crate) fn plan(args: PlanArgs, out: &mut dyn Write) -> Result<()> {
    if let Ok(config) = super::operator::load(&args.config) {
        return super::operator::plan(&config, &args, out);
    }
    match setup::load(&args.config)? {
        AnyConfig::Classifier(c) => plan::plan(setup::classifier(&c)?, &args, out),
        AnyConfig::Particles(c) => {
            let (setup, _stand_in) = nbody::plan_setup(&c)?;
            plan::plan(setup, &args, out)
        }
        AnyConfig::Eqprop(c) => plan::plan(setup::eqprop(&c)?, &args, out),
        _ => unreachable!("setup::load refuses the other workloads"),
    }
}
