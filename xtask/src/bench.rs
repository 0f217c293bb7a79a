//! `cargo xtask bench [scenario] [fleet-bench args]`: builds the bridge, the
//! operator and the benchmark in release mode and runs `fleet-bench` with the
//! test environment's addresses, as `cargo xtask test` does for the tests.
//! The benchmark itself lives in `sensor-fleet` so xtask stays light.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{paths, peers, prereq, testenv, toolchain};

pub fn run(args: &[String]) -> Result<()> {
    prereq::ensure()?;
    let dir = paths::state_dir();
    // Start an environment that does not exist; but never (re)start servers of a
    // running one: a stopped server may be another engineer's fault test.
    let state = match testenv::load(&dir)? {
        None => {
            testenv::up(&dir)?;
            testenv::load(&dir)?.context("test environment state vanished")?
        }
        Some(state) => state,
    };
    let down: Vec<&str> = state
        .servers
        .iter()
        .filter(|s| !s.is_running())
        .map(|s| s.name.as_str())
        .collect();
    if !down.is_empty() {
        bail!(
            "test environment servers not running: {} (`cargo xtask testenv status`; start them with `cargo xtask testenv up` once nobody's fault test needs them stopped)",
            down.join(", ")
        );
    }
    let vars = testenv::env_vars(&dir, &state);

    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![toolchain::kubernetes_bin_dir()];
    dirs.extend(std::env::split_paths(&path));
    let path = std::env::join_paths(dirs).context("build PATH")?;

    paths::cargo_build_release(&["bridge-runtime", "operator", "sensor-fleet"])?;
    // The drain scenario compares with other bridges: ready them (a venv,
    // a Go build; each skipped with its reason when it cannot be had).
    let scenario = args.first().map(String::as_str).unwrap_or("reference");
    let peer_vars = if matches!(scenario, "drain" | "all") {
        peers::env(&peers::prepare(
            &paths::workspace().join("target").join("bench-peers"),
        ))
    } else {
        Vec::new()
    };
    let bin = paths::workspace().join("target/release/fleet-bench");
    let status = Command::new(&bin)
        .current_dir(paths::workspace())
        .args(args)
        .envs(&vars)
        .envs(peer_vars)
        .env("PATH", path)
        .status()
        .with_context(|| format!("run {}", bin.display()))?;
    if !status.success() {
        bail!(
            "benchmark failed ({status}); logs of the bridge/operator are under target/bench/<scenario>/"
        );
    }
    Ok(())
}
