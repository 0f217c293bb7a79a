//! `cargo xtask images`: the operator and bridge-runtime container images,
//! built with buildah (no Docker engine) `FROM scratch`: the binary, the
//! shared libraries `ldd` lists, CA certificates and a non-root user.
//!
//! The build context is prepared here (`target/images/<image>/rootfs/`) and
//! the crate's `Containerfile` copies it in. When the test environment's real
//! node runs, both images are also imported into its containerd (namespace
//! `k8s.io`), so pods on that node run them without a registry.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{paths, testenv};

/// The images: (image name, crate directory, binary).
pub const IMAGES: &[(&str, &str, &str)] = &[
    ("mqtt-kafka-operator", "operator", "operator"),
    ("mqtt-kafka-bridge", "bridge-runtime", "bridge-runtime"),
];

/// User and group the images run as (the same as the operator's pods).
const RUN_AS: u32 = 65532;
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(clap::Args)]
pub struct Options {
    /// Take the binaries from this directory (e.g. target/debug after
    /// `cargo test`) instead of running `cargo build --release`.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Image tag; defaults to the crate version.
    #[arg(long)]
    tag: Option<String>,
    /// containers-storage root (buildah/podman `--root`); the system store when unset.
    #[arg(long)]
    root: Option<PathBuf>,
    /// containers-storage run root (`--runroot`), with --root.
    #[arg(long)]
    runroot: Option<PathBuf>,
}

/// Builds both images from the binaries in `bin_dir` into the system store
/// and imports them into the test node's containerd (the demo's images).
pub fn build_from(bin_dir: PathBuf, tag: &str) -> Result<()> {
    run(&Options {
        bin_dir: Some(bin_dir),
        tag: Some(tag.into()),
        root: None,
        runroot: None,
    })
}

pub fn run(opts: &Options) -> Result<()> {
    let workspace = paths::workspace();
    let bin_dir = match &opts.bin_dir {
        Some(dir) => dir.clone(),
        None => {
            let crates: Vec<&str> = IMAGES.iter().map(|(_, krate, _)| *krate).collect();
            paths::cargo_build_release(&crates)?;
            workspace.join("target/release")
        }
    };
    let tag = opts
        .tag
        .clone()
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string());
    let node = running_node()?;
    for (image, krate, binary) in IMAGES {
        let started = std::time::Instant::now();
        let context = workspace.join("target/images").join(image);
        prepare_context(&bin_dir.join(binary), &context)?;
        let name = format!("localhost/{image}:{tag}");
        let mut cmd = Command::new("buildah");
        cmd.args(["--storage-driver", "vfs"]);
        if let Some(root) = &opts.root {
            cmd.arg("--root").arg(root);
        }
        if let Some(runroot) = &opts.runroot {
            cmd.arg("--runroot").arg(runroot);
        }
        cmd.args(["bud", "--quiet", "--isolation", "chroot", "--layers=false"])
            .args(["--tag", &name, "--file"])
            .arg(workspace.join(krate).join("Containerfile"))
            .arg(&context);
        run_cmd(&mut cmd, &format!("buildah bud of {name}"))?;
        eprintln!(
            "xtask: built {name} in {:.0}s",
            started.elapsed().as_secs_f64()
        );
        if let Some(ctr) = &node {
            let started = std::time::Instant::now();
            let archive = context.join("image.tar");
            let _ = std::fs::remove_file(&archive);
            let mut push = Command::new("buildah");
            push.args(["--storage-driver", "vfs"]);
            if let Some(root) = &opts.root {
                push.arg("--root").arg(root);
            }
            if let Some(runroot) = &opts.runroot {
                push.arg("--runroot").arg(runroot);
            }
            push.args(["push", "--quiet", &name])
                .arg(format!("docker-archive:{}:{name}", archive.display()));
            run_cmd(&mut push, &format!("buildah push of {name}"))?;
            testenv::node::import_image(ctr, &testenv::node::containerd_socket(), &archive)?;
            let _ = std::fs::remove_file(&archive);
            eprintln!(
                "xtask: imported {name} into the test node's containerd in {:.0}s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    if node.is_none() {
        eprintln!(
            "xtask: the test environment's node is not up, so the images were not imported \
             into its containerd (`cargo xtask testenv up`, then `cargo xtask images` again)"
        );
    }
    Ok(())
}

/// `ctr` of the test environment's containerd, if it runs.
fn running_node() -> Result<Option<PathBuf>> {
    let Some(state) = testenv::load(&paths::state_dir())? else {
        return Ok(None);
    };
    let runs = state
        .servers
        .iter()
        .any(|s| s.name == "containerd" && s.is_running());
    Ok(state.vars.get("CTR").filter(|_| runs).map(PathBuf::from))
}

/// `<context>/rootfs`: the binary (without debug info), its shared
/// libraries at the paths ldd names, the CA bundle, passwd/group entries for
/// the non-root user.
fn prepare_context(binary: &Path, context: &Path) -> Result<()> {
    if !binary.is_file() {
        bail!(
            "{} not found: build it first (`cargo build --release`, or `cargo test` for --bin-dir target/debug)",
            binary.display()
        );
    }
    let _ = std::fs::remove_dir_all(context);
    let rootfs = context.join("rootfs");
    let bin_dir = rootfs.join("usr/local/bin");
    std::fs::create_dir_all(&bin_dir)?;
    let target = bin_dir.join(binary.file_name().context("binary has a name")?);
    // Debug info is most of a debug binary's size and useless in an image.
    let stripped = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(binary)
        .arg(&target)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(binary, &target).with_context(|| format!("copy {}", binary.display()))?;
    }

    for lib in shared_libraries(binary)? {
        let dest = rootfs.join(lib.strip_prefix("/").unwrap_or(&lib));
        std::fs::create_dir_all(dest.parent().context("library has a directory")?)?;
        // Copy the file the (possibly symlinked) path resolves to, under the name ldd used.
        std::fs::copy(&lib, &dest).with_context(|| format!("copy {}", lib.display()))?;
    }

    let certs = rootfs.join("etc/ssl/certs");
    std::fs::create_dir_all(&certs)?;
    std::fs::copy(CA_BUNDLE, certs.join("ca-certificates.crt"))
        .with_context(|| format!("copy {CA_BUNDLE}; install the Debian package ca-certificates"))?;
    let etc = rootfs.join("etc");
    std::fs::write(
        etc.join("passwd"),
        format!("nonroot:x:{RUN_AS}:{RUN_AS}:nonroot:/:/sbin/nologin\n"),
    )?;
    std::fs::write(etc.join("group"), format!("nonroot:x:{RUN_AS}:\n"))?;
    std::fs::create_dir_all(rootfs.join("tmp"))?;
    Ok(())
}

/// Absolute paths of the shared libraries and the loader `ldd` lists.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("run ldd (Debian package libc-bin)")?;
    if !out.status.success() {
        bail!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        // `libssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x…)`, or the
        // loader `/lib64/ld-linux-x86-64.so.2 (0x…)`; linux-vdso has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(path));
        } else if line.contains("not found") {
            bail!("{}: {}", binary.display(), line.trim());
        }
    }
    Ok(libs)
}

fn run_cmd(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| {
        format!("start {what} (is buildah installed? `apt-get install -y buildah`)")
    })?;
    if !status.success() {
        bail!("{what} failed ({status}); see the output above");
    }
    Ok(())
}
