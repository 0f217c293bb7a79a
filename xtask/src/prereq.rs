//! Prerequisites from the machine's package registries. Whatever is missing is
//! installed (Debian packages need root), or named in a one-line error.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Debian packages the test environment and the workspace build need.
/// - mosquitto, mosquitto-clients: the MQTT broker under test (and CLI clients for people).
/// - openssl: generates the test CA and certificates.
/// - libssl-dev, pkg-config, zlib1g-dev, cmake, g++, make: build librdkafka (rdkafka-sys).
/// - maven, openjdk-17-jre-headless: fetch and run Apache Kafka.
/// - buildah, podman, runc: build and run the container images (image tests);
///   binutils (objcopy) strips debug info from the binaries in them; ca-certificates goes into them.
/// - containerd, containernetworking-plugins (the loopback CNI plugin): the
///   container runtime of the real test node; gcc, libc6-dev: its pause program.
/// - prometheus: promtool checks and unit-tests the alert rules, and the
///   monitoring tests run their own Prometheus on a loopback port (the
///   package's system service, if it starts, is not used).
const DEBIAN_PACKAGES: &[&str] = &[
    "mosquitto",
    "mosquitto-clients",
    "openssl",
    "libssl-dev",
    "pkg-config",
    "zlib1g-dev",
    "cmake",
    "g++",
    "make",
    "maven",
    "buildah",
    "podman",
    "runc",
    "binutils",
    "ca-certificates",
    "containerd",
    "containernetworking-plugins",
    "gcc",
    "libc6-dev",
    "prometheus",
];

/// Installs missing Debian packages and checks the toolchains that do not come
/// from Debian (Go for the Kubernetes binaries, Java 17 for Kafka).
pub fn ensure() -> Result<()> {
    ensure_debian_packages(DEBIAN_PACKAGES)?;
    ensure_java()?;
    ensure_go()?;
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn ensure_debian_packages(packages: &[&str]) -> Result<()> {
    if Command::new("dpkg-query")
        .arg("--version")
        .output()
        .is_err()
    {
        // Not Debian-like: trust the user's setup, later steps name what is missing.
        return Ok(());
    }
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "missing Debian packages: {list}; install them with `sudo apt-get install -y {list}`"
        );
    }
    eprintln!("xtask: installing Debian packages: {list}");
    let update = Command::new("apt-get")
        .args(["update", "-q"])
        .stdout(Stdio::null())
        .status()
        .context("run apt-get update")?;
    if !update.success() {
        bail!("`apt-get update` failed; install {list} by hand");
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .context("run apt-get install")?;
    if !status.success() {
        bail!("`apt-get install {list}` failed; install them by hand");
    }
    Ok(())
}

fn ensure_java() -> Result<()> {
    let out = Command::new("java").arg("-version").output();
    let text = match out {
        Ok(o) => String::from_utf8_lossy(&o.stderr).to_string(),
        Err(_) => {
            ensure_debian_packages(&["openjdk-17-jre-headless"])?;
            return Ok(());
        }
    };
    // `openjdk version "17.0.15"` or `"21.0.2"`.
    let major = text
        .split('"')
        .nth(1)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(0);
    if major < 17 {
        bail!(
            "Kafka 4 needs Java 17 or newer, found `{}`; install openjdk-17-jre-headless",
            text.lines().next().unwrap_or("?")
        );
    }
    Ok(())
}

fn ensure_go() -> Result<()> {
    let out = Command::new("go").arg("version").output().map_err(|_| {
        anyhow::anyhow!(
            "Go is not installed: the Kubernetes test binaries are built from the Go module proxy; \
             install Go 1.21 or newer (it fetches the toolchain go.mod asks for)"
        )
    })?;
    if !out.status.success() {
        bail!("`go version` failed; install Go 1.21 or newer");
    }
    Ok(())
}
