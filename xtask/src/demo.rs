//! `cargo xtask demo [up options]` / `cargo xtask demo watch` / `cargo xtask demo down`:
//! the quickstart. Brings the test environment up (installing what is
//! missing), builds the release binaries and hands over to `mkb-demo` (crate
//! `e2e`), which installs the operator with Helm, applies the sample bridge,
//! runs it with a sensor fleet in the background and shows the flow. The
//! heavy lifting is in that binary so xtask stays light.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{images, paths, prereq, testenv, toolchain};

pub fn run(args: &[String]) -> Result<()> {
    let started = Instant::now();
    let (action, rest) = match args.first().map(String::as_str) {
        Some("down") => ("down", &args[1..]),
        Some("watch") => ("watch", &args[1..]),
        Some("up") => ("up", &args[1..]),
        _ => ("up", args),
    };
    let workspace = paths::workspace();
    let demo_bin = workspace.join("target/release/mkb-demo");
    let dir = paths::state_dir();
    if action != "up" {
        let state = testenv::load(&dir)?
            .context("the test environment is not up, so neither is the demo")?;
        if !demo_bin.is_file() {
            bail!("{} not built: nothing to {action}", demo_bin.display());
        }
        return demo(&demo_bin, action, rest, &dir, &state);
    }

    step(1, "prerequisites (Debian packages, Helm)");
    prereq::ensure()?;
    toolchain::ensure_helm()?;
    step(
        2,
        "test environment: Kubernetes control plane, kwok node and a real node \
         (kubelet + containerd), Kafka, Mosquitto (the first time builds Kubernetes \
         from source: 10-20 minutes on 2 cores)",
    );
    let state = {
        let _tick = Ticker::start("test environment");
        environment(&dir)?
    };
    eprintln!(
        "xtask demo: test environment ready after {:.0}s",
        started.elapsed().as_secs_f64()
    );

    step(
        3,
        "cargo build --release -p bridge-runtime -p operator -p e2e (a few minutes the first time), \
         and the images (tag demo) into the real node's containerd",
    );
    paths::cargo_build_release(&["bridge-runtime", "operator", "e2e"])?;
    images::build_from(workspace.join("target/release"), "demo")?;

    step(
        4,
        "operator, sample bridge (its pods on the real node) and sensor fleet",
    );
    demo(&demo_bin, "up", rest, &dir, &state)?;
    step(5, "the flow, live for 60 s");
    demo(
        &demo_bin,
        "watch",
        &["--seconds".into(), "60".into()],
        &dir,
        &state,
    )
}

/// Prints how long a silent step (a Go or cargo build) has been running,
/// every 30 s, until dropped.
struct Ticker(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Ticker {
    fn start(what: &'static str) -> Self {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut next = Duration::from_secs(30);
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if start.elapsed() >= next {
                    eprintln!(
                        "xtask demo: … {what}: still working ({:.0} min {:02.0} s)",
                        (start.elapsed().as_secs() / 60) as f64,
                        (start.elapsed().as_secs() % 60) as f64
                    );
                    next += Duration::from_secs(30);
                }
            }
        });
        Self(done)
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn step(n: u32, what: &str) {
    eprintln!("xtask demo: [{n}/5] {what}");
}

/// Starts the environment if nothing of it runs; when only some servers are
/// down, waits a little first (on a shared machine a fault test may have
/// stopped one on purpose), then starts them.
fn environment(dir: &std::path::Path) -> Result<testenv::State> {
    if let Some(state) = testenv::load(dir)?
        && state.servers.iter().any(|s| s.is_running())
    {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            let state = testenv::load(dir)?.context("test environment state vanished")?;
            if state.servers.iter().all(|s| s.is_running()) {
                return Ok(state);
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    testenv::up(dir)?;
    testenv::load(dir)?.context("test environment state vanished")
}

fn demo(
    bin: &PathBuf,
    action: &str,
    args: &[String],
    dir: &std::path::Path,
    state: &testenv::State,
) -> Result<()> {
    let vars = testenv::env_vars(dir, state);
    let status = Command::new(bin)
        .current_dir(paths::workspace())
        .args(["--state", "target/demo", action])
        .args(args)
        .envs(&vars)
        .status()
        .with_context(|| format!("run {}", bin.display()))?;
    if !status.success() {
        bail!("mkb-demo {action} failed ({status}); logs in target/demo/");
    }
    Ok(())
}
