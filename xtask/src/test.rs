//! `cargo xtask test`: the one command that proves the project works.
use anyhow::{Context, Result, bail};

use crate::{paths, prereq, testenv, toolchain};

pub fn run(cargo_args: &[String]) -> Result<()> {
    let started = std::time::Instant::now();
    prereq::ensure()?;
    let helm = toolchain::ensure_helm()?;
    let dir = paths::state_dir();
    let was_up = testenv::load(&dir)?.is_some_and(|s| s.servers.iter().all(|s| s.is_running()));
    testenv::up(&dir)?;
    eprintln!(
        "xtask: test environment ready after {:.0}s",
        started.elapsed().as_secs_f64()
    );
    let state = testenv::load(&dir)?.context("test environment state vanished")?;
    let vars = testenv::env_vars(&dir, &state);

    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![toolchain::kubernetes_bin_dir()];
    dirs.extend(helm.parent().map(Into::into));
    dirs.extend(std::env::split_paths(&path));
    let path = std::env::join_paths(dirs).context("build PATH")?;

    let status = paths::cargo()
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(cargo_args)
        .envs(&vars)
        .env("PATH", path)
        .status()
        .context("run cargo test")?;

    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
    if !status.success() {
        print_logs(&vars);
    }
    // In CI nothing outlives the run; on a laptop a running environment is kept
    // for the next run (and was left alone if it was already up).
    if ci && !was_up {
        testenv::down(&dir)?;
    }
    eprintln!(
        "xtask: test run took {:.0}s",
        started.elapsed().as_secs_f64()
    );
    if !status.success() {
        bail!(
            "tests failed (cargo test exited with {status}); server logs are in {}",
            vars.get("TESTENV_LOG_DIR")
                .map(String::as_str)
                .unwrap_or("?")
        );
    }
    Ok(())
}

/// Where the server logs are, and the last lines of each, for a failed run.
fn print_logs(vars: &std::collections::BTreeMap<String, String>) {
    let Some(log_dir) = vars.get("TESTENV_LOG_DIR") else {
        return;
    };
    eprintln!("\nxtask: server logs are in {log_dir}; their last lines:");
    let Ok(entries) = std::fs::read_dir(log_dir) else {
        return;
    };
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        eprintln!(
            "==> {} <==\n{}\n",
            path.display(),
            testenv::process::tail(&path, 20)
        );
    }
}
