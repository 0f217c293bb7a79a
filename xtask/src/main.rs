//! `cargo xtask`: the project's own tasks.
//!
//! - `cargo xtask testenv <up|down|status|env|stop S|start S|restart S>`: the
//!   local servers the tests talk to (Kubernetes control plane, Kafka, Mosquitto).
//! - `cargo xtask test`: installs what is missing, brings the test environment
//!   up and runs the whole test suite against it.
//! - `cargo xtask bench [scenario]`: the benchmarks (`fleet-bench` in
//!   `sensor-fleet`) against the test environment; results in `target/bench/`.
//! - `cargo xtask images`: the operator and bridge-runtime container images (buildah).
//! - `cargo xtask demo [down|watch]`: the quickstart (`mkb-demo` in `e2e`).

mod bench;
mod demo;
mod images;
mod paths;
mod peers;
mod prereq;
mod test;
mod testenv;
mod toolchain;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    about = "Project tasks: test environment and test suite"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage the local test environment.
    Testenv {
        #[command(subcommand)]
        action: testenv::Action,
    },
    /// Install prerequisites, bring the test environment up and run every test.
    Test {
        /// Extra arguments passed to `cargo test` (after `--workspace`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_args: Vec<String>,
    },
    /// Build in release mode and run a benchmark scenario (reference, reference-qos0,
    /// peak, peak-qos0, kafka-to-mqtt, operator-scale, all) against the test environment.
    Bench {
        /// Scenario and further `fleet-bench` arguments (`-- --help` lists them).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the operator and bridge-runtime images with buildah, tagged with the crate version.
    Images(images::Options),
    /// Quickstart: test environment, operator via Helm, the sample bridge and a
    /// sensor fleet running, the flow shown live; `demo watch` shows it again,
    /// `demo down` stops it. Options go to `mkb-demo up` (`-- --help`).
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Testenv { action } => testenv::run(action),
        Command::Test { cargo_args } => test::run(&cargo_args),
        Command::Bench { args } => bench::run(&args),
        Command::Images(opts) => images::run(&opts),
        Command::Demo { args } => demo::run(&args),
    };
    if let Err(e) = result {
        // One line, no backtrace: what failed and, in the message, how to fix it.
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}
