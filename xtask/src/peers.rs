//! The "peer" bridges `cargo xtask bench drain` compares ours with, made
//! ready to run: a Python bridge (paho-mqtt + confluent-kafka in a venv) and
//! Benthos (a Go binary built from `bench/peers/benthos`). See
//! `bench/peers/README.md` for what they are and how they acknowledge.
//!
//! Neither is needed for anything but that comparison, so a peer that cannot
//! be prepared (no `python3 -m venv`, no Go, no registry) is reported with a
//! one-line reason and the benchmark goes on without it.
//!
//! How the harness starts them (each is one process, no wrapper shell):
//! - python: `$BENCH_PEER_PYTHON $BENCH_PEER_DIR/python_bridge.py`
//! - benthos: `$BENCH_PEER_BENTHOS -c $BENCH_PEER_DIR/benthos/<direction>.yaml`
//!   with `<direction>` = `mqtt-to-kafka` | `kafka-to-mqtt`,
//!
//! both configured by the `PEER_*` variables listed in that README.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result, bail};

use crate::paths;

/// The Python packages of the Python peer, pinned.
const PIP_PACKAGES: [&str; 2] = ["paho-mqtt==2.2.0", "confluent-kafka==2.16.1"];
/// Succeeds only where both packages are importable at the pinned versions.
const PYTHON_CHECK: &str = "import paho.mqtt, confluent_kafka, sys; from importlib.metadata import version as v; \
     sys.exit(0 if (v('paho-mqtt'), v('confluent-kafka')) == ('2.2.0', '2.16.1') else 1)";
/// The Benthos build's inputs: the binary is rebuilt when one is newer.
const BENTHOS_SOURCES: [&str; 3] = ["main.go", "go.mod", "go.sum"];

/// What `prepare` achieved: the program to run per peer, or why there is none.
pub struct Peers {
    /// A venv's `python3` that imports paho-mqtt and confluent-kafka.
    pub python: Result<PathBuf, String>,
    /// The built `benthos-peer` binary.
    pub benthos: Result<PathBuf, String>,
}

/// `bench/peers` of this workspace: the Python bridge and the Benthos configs.
pub fn peers_dir() -> PathBuf {
    paths::workspace().join("bench").join("peers")
}

/// Makes both peers ready under `dir` (a venv in `dir/venv`, the binary
/// `dir/benthos-peer`), skipping whatever is already up to date. Never fails:
/// a peer that cannot be had carries the reason instead.
pub fn prepare(dir: &Path) -> Peers {
    let dir = match std::fs::create_dir_all(dir).and_then(|()| dir.canonicalize()) {
        Ok(dir) => dir,
        Err(e) => {
            let reason = format!("cannot create {}: {e}", dir.display());
            eprintln!("peers: {reason}");
            return Peers {
                python: Err(reason.clone()),
                benthos: Err(reason),
            };
        }
    };
    let python = prepare_python(&dir).map_err(|e| unavailable("python", &e));
    let benthos = prepare_benthos(&dir).map_err(|e| unavailable("benthos", &e));
    Peers { python, benthos }
}

/// The variables that tell the benchmark where the peers are:
/// `BENCH_PEER_DIR` always, `BENCH_PEER_PYTHON` / `BENCH_PEER_BENTHOS` for a
/// peer that is ready, `BENCH_PEER_{PYTHON,BENTHOS}_UNAVAILABLE` (the
/// reason) for one that is not.
pub fn env(peers: &Peers) -> Vec<(String, String)> {
    let mut vars = vec![(
        "BENCH_PEER_DIR".to_string(),
        peers_dir().display().to_string(),
    )];
    for (name, peer) in [("PYTHON", &peers.python), ("BENTHOS", &peers.benthos)] {
        vars.push(match peer {
            Ok(path) => (format!("BENCH_PEER_{name}"), path.display().to_string()),
            Err(reason) => (format!("BENCH_PEER_{name}_UNAVAILABLE"), reason.clone()),
        });
    }
    vars
}

fn unavailable(peer: &str, e: &anyhow::Error) -> String {
    let reason = one_line(&format!("{e:#}"));
    eprintln!("peers: {peer} peer unavailable: {reason}");
    reason
}

fn prepare_python(dir: &Path) -> Result<PathBuf> {
    let venv = dir.join("venv");
    let python = venv.join("bin").join("python3");
    if python.exists() && python_ready(&python) {
        eprintln!("peers: python venv ready ({})", python.display());
        return Ok(python);
    }
    if !python.exists() {
        eprintln!("peers: python3 -m venv {}", venv.display());
        let out = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .output()
            .context("run python3 -m venv (is python3 installed?)")?;
        check(&out, "python3 -m venv (is python3-venv installed?)")?;
    }
    let pip = venv.join("bin").join("pip");
    eprintln!(
        "peers: {} install {}",
        pip.display(),
        PIP_PACKAGES.join(" ")
    );
    let started = Instant::now();
    let out = Command::new(&pip)
        .args(["install", "--disable-pip-version-check", "--quiet"])
        .args(PIP_PACKAGES)
        .output()
        .with_context(|| format!("run {}", pip.display()))?;
    check(&out, "pip install")?;
    if !python_ready(&python) {
        bail!(
            "{PIP_PACKAGES:?} installed but not importable by {}",
            python.display()
        );
    }
    eprintln!(
        "peers: python venv ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(python)
}

fn python_ready(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", PYTHON_CHECK])
        .output()
        .is_ok_and(|out| out.status.success())
}

fn prepare_benthos(dir: &Path) -> Result<PathBuf> {
    let src = peers_dir().join("benthos");
    let binary = dir.join("benthos-peer");
    let built = modified(&binary).ok();
    let mut newest_source = SystemTime::UNIX_EPOCH;
    for name in BENTHOS_SOURCES {
        newest_source = newest_source.max(modified(&src.join(name))?);
    }
    if built.is_some_and(|built| built > newest_source) {
        eprintln!("peers: benthos-peer up to date ({})", binary.display());
        return Ok(binary);
    }
    eprintln!(
        "peers: go build -o {} . (in {}; the first build takes a minute or more)",
        binary.display(),
        src.display()
    );
    let started = Instant::now();
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&binary)
        .arg(".")
        .current_dir(&src)
        .output()
        .context("run go build (is Go installed?)")?;
    check(&out, "go build")?;
    eprintln!(
        "peers: built benthos-peer in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(binary)
}

fn modified(path: &Path) -> Result<SystemTime> {
    std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .with_context(|| format!("read the modification time of {}", path.display()))
}

/// Fails with the command's last lines of error output when it failed.
fn check(out: &Output, what: &str) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    let tail = tail[tail.len().saturating_sub(3)..].join(" | ");
    bail!("{what} failed ({}): {tail}", out.status)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_present_peers_and_reasons_for_missing_ones() {
        let peers = Peers {
            python: Ok(PathBuf::from("/v/bin/python3")),
            benthos: Err("go build failed: no Go".into()),
        };
        let vars = env(&peers);
        let get = |name: &str| {
            vars.iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("BENCH_PEER_PYTHON"), Some("/v/bin/python3"));
        assert_eq!(get("BENCH_PEER_PYTHON_UNAVAILABLE"), None);
        assert_eq!(get("BENCH_PEER_BENTHOS"), None);
        assert_eq!(
            get("BENCH_PEER_BENTHOS_UNAVAILABLE"),
            Some("go build failed: no Go")
        );
        let dir = get("BENCH_PEER_DIR").map(PathBuf::from);
        assert!(dir.is_some_and(|d| d.is_absolute() && d.ends_with("bench/peers")));
    }

    #[test]
    fn reasons_are_one_line() {
        assert_eq!(one_line("a\n  b\tc\n"), "a b c");
    }
}
