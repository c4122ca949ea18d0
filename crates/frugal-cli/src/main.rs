//! The `frugal` command-line program.

mod args;
mod commands;
mod config;
mod plot;
mod presets;
mod progress;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};
use crate::config::ConfigError;

// Counts heap bytes, so `frugal plan` can profile a training step exactly.
#[global_allocator]
static ALLOC: frugal_train::memory::CountingAlloc = frugal_train::memory::CountingAlloc;

fn main() -> ExitCode {
    // A panic inside a guarded section (a training run on a GPU backend) comes back as an
    // error naming the device and setting; printing it there too would say it twice.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !frugal_train::device::guarded() {
            report(info);
        }
    }));
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = match cli.command {
        Command::Probe(args) => commands::probe::run(args, &mut out),
        Command::Config(command) => commands::config::run(command, &mut out),
        Command::Data(command) => commands::data::run(command, &mut out),
        Command::Train(args) => commands::workloads::train(args, &mut out),
        Command::Plan(args) => commands::workloads::plan(args, &mut out),
        Command::Nbody(command) => commands::nbody::run(command, &mut out),
        Command::Operator(command) => commands::operator::run(command, &mut out),
        Command::Bench(args) => commands::bench::run(args, &mut out),
        Command::Evolve(args) => commands::evolve::run(args, &mut out),
        Command::Worker(args) => commands::farm::worker(args, &mut out),
        Command::Farm(command) => commands::farm::farm(command, &mut out),
        Command::Eqprop(command) => commands::eqprop::run(command, &mut out),
    }
    .and_then(|()| out.flush().map_err(Into::into));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`frugal probe | head`) is the reader's choice, not a failure.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "error: {e:#}");
            if is_user_error(&e) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        let kind = c
            .downcast_ref::<std::io::Error>()
            .map(std::io::Error::kind)
            .or_else(|| {
                c.downcast_ref::<serde_json::Error>()
                    .and_then(serde_json::Error::io_error_kind)
            });
        kind == Some(std::io::ErrorKind::BrokenPipe)
    })
}

/// Bad input (a configuration, a path, a value) exits 2, like a usage error; a failure
/// while doing the work exits 1.
fn is_user_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<ConfigError>().is_some()
            || c.downcast_ref::<commands::UserError>().is_some()
            || matches!(
                c.downcast_ref::<frugal_evolve::run::RunError>(),
                Some(
                    frugal_evolve::run::RunError::File { .. }
                        | frugal_evolve::run::RunError::Evolve(_)
                )
            )
            || matches!(
                c.downcast_ref::<frugal_store::StoreError>(),
                Some(
                    frugal_store::StoreError::Directory { .. }
                        | frugal_store::StoreError::Setting { .. }
                        | frugal_store::StoreError::Import { .. }
                )
            )
            || matches!(
                c.downcast_ref::<frugal_train::TrainError>(),
                Some(
                    frugal_train::TrainError::MissingColumn { .. }
                        | frugal_train::TrainError::Column { .. }
                        | frugal_train::TrainError::Setting { .. }
                        | frugal_train::TrainError::NoSamples { .. }
                        | frugal_train::TrainError::RunExists { .. }
                        | frugal_train::TrainError::Unsupported(_)
                        | frugal_train::TrainError::Snapshot { .. }
                        | frugal_train::TrainError::OverBudget { .. }
                )
            )
            || matches!(
                c.downcast_ref::<frugal_hw::HwError>(),
                Some(frugal_hw::HwError::Path { .. })
            )
    })
}
