//! Where things live: the workspace, the per-user cache of server binaries,
//! and the state directory of a running test environment.

use std::path::PathBuf;

/// The workspace root (the parent of this crate).
pub fn workspace() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Cache of downloaded and built server binaries, shared by every checkout so
/// a second `testenv up` (or a fresh clone in CI) takes seconds.
pub fn cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("MKB_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("mqtt-kafka-bridge")
}

/// State of this checkout's test environment: data, configuration, logs, pids.
pub fn state_dir() -> PathBuf {
    match std::env::var_os("TESTENV_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => workspace().join("target").join("testenv"),
    }
}

/// A `cargo` command for the workspace without the variables `cargo run` set
/// for xtask itself: build scripts such as ring's track `CARGO_MANIFEST_DIR`,
/// so passing xtask's value on made every `cargo xtask …` rebuild half the
/// dependency tree that a plain `cargo build` had just built (and back).
pub fn cargo() -> std::process::Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(program);
    cmd.current_dir(workspace());
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let set_by_cargo_run = matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
        ) || name.starts_with("CARGO_PKG_");
        if set_by_cargo_run {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// `cargo build --release -p <crate>…` for the workspace, failing on a failed build.
pub fn cargo_build_release(crates: &[&str]) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut cmd = cargo();
    cmd.args(["build", "--release"]);
    for krate in crates {
        cmd.args(["-p", krate]);
    }
    let status = cmd.status().context("run cargo build")?;
    if !status.success() {
        anyhow::bail!(
            "cargo build --release -p {} failed ({status})",
            crates.join(" -p ")
        );
    }
    Ok(())
}
