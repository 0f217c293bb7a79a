//! The server programs, fetched from the package registries once and cached by
//! version under [`paths::cache`].

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::paths;

/// Kubernetes release of the test control plane; matches the `v1_35` feature
/// of k8s-openapi in the workspace and `xtask/go/kubernetes/go.mod`.
pub const KUBERNETES_VERSION: &str = "v1.35.4";
/// kwok, the fake node that runs (pretends to run) the Pods.
pub const KWOK_VERSION: &str = "v0.7.0";
/// Apache Kafka; matches `xtask/maven/kafka/pom.xml` and `xtask/maven/kafka-tools/pom.xml`.
pub const KAFKA_VERSION: &str = "4.1.1";
/// Helm, for the chart tests and for rendering `deploy/`.
pub const HELM_VERSION: &str = "v3.22.0";

/// Paths of every server program the test environment runs.
pub struct Toolchain {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kube_scheduler: PathBuf,
    pub kubectl: PathBuf,
    pub kwok: PathBuf,
    /// Directory of the Kafka jars (the JVM classpath is `<dir>/*`).
    pub kafka_libs: PathBuf,
    pub java: PathBuf,
    pub mosquitto: PathBuf,
    pub mosquitto_passwd: PathBuf,
    /// The real node: kubelet (built like the control plane), containerd
    /// and its `ctr` client (Debian), and the pause image as an archive.
    pub kubelet: PathBuf,
    pub containerd: PathBuf,
    pub ctr: PathBuf,
    pub pause_archive: PathBuf,
}

impl Toolchain {
    /// Builds or fetches whatever is not cached yet, printing progress for the
    /// long first-time steps.
    pub fn ensure() -> Result<Self> {
        let k8s_bin = ensure_kubernetes()?;
        let kwok = ensure_kwok()?;
        let kafka_libs = ensure_maven_classpath("kafka", "libs", "Apache Kafka")?;
        // Fetched with the servers, so `testenv kafka-acl` never downloads mid-test.
        ensure_kafka_tools()?;
        let kubelet = ensure_kubelet()?;
        let pause_archive = ensure_pause_image()?;
        Ok(Self {
            etcd: etcd_bin_vendored::etcd_bin_path()
                .map_err(|e| anyhow::anyhow!("etcd-bin-vendored: {e:?}"))?
                .to_path_buf(),
            kube_apiserver: k8s_bin.join("kube-apiserver"),
            kube_controller_manager: k8s_bin.join("kube-controller-manager"),
            kube_scheduler: k8s_bin.join("kube-scheduler"),
            kubectl: k8s_bin.join("kubectl"),
            kwok,
            kafka_libs,
            java: which("java", "openjdk-17-jre-headless")?,
            mosquitto: which_in("mosquitto", &["/usr/sbin"], "mosquitto")?,
            mosquitto_passwd: which("mosquitto_passwd", "mosquitto")?,
            kubelet,
            containerd: which("containerd", "containerd")?,
            ctr: which("ctr", "containerd")?,
            pause_archive,
        })
    }
}

/// Directory holding the cached Kubernetes binaries, if they were built.
pub fn kubernetes_bin_dir() -> PathBuf {
    paths::cache()
        .join("kubernetes")
        .join(KUBERNETES_VERSION)
        .join("bin")
}

const KUBERNETES_COMMANDS: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
];

fn ensure_kubernetes() -> Result<PathBuf> {
    let bin = kubernetes_bin_dir();
    if KUBERNETES_COMMANDS.iter().all(|c| bin.join(c).exists()) {
        return Ok(bin);
    }
    eprintln!(
        "xtask: building Kubernetes {KUBERNETES_VERSION} ({}) from the Go module proxy; first time only, about 10-20 minutes on 2 cores…",
        KUBERNETES_COMMANDS.join(", ")
    );
    go_build_kubernetes(KUBERNETES_COMMANDS, &bin)?;
    Ok(bin)
}

/// The kubelet of the real test node, from the same Go module and version
/// as the control plane. Cached in its own directory so that adding it did
/// not invalidate the control plane's cache (about a minute with the Go
/// build cache warm from the control plane).
fn ensure_kubelet() -> Result<PathBuf> {
    let bin = paths::cache()
        .join("kubelet")
        .join(KUBERNETES_VERSION)
        .join("bin");
    let kubelet = bin.join("kubelet");
    if kubelet.exists() {
        return Ok(kubelet);
    }
    eprintln!(
        "xtask: building kubelet {KUBERNETES_VERSION} from the Go module proxy; first time only, about a minute…"
    );
    go_build_kubernetes(&["kubelet"], &bin)?;
    Ok(kubelet)
}

/// `go build` of `k8s.io/kubernetes/cmd/<command>` into `bin` (replaced whole).
fn go_build_kubernetes(commands: &[&str], bin: &Path) -> Result<()> {
    let module = paths::workspace().join("xtask/go/kubernetes");
    let tmp = bin.with_extension("partial");
    std::fs::create_dir_all(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    let version = KUBERNETES_VERSION;
    let minor = version.split('.').nth(1).unwrap_or("0");
    // Without these the binaries report v0.0.0-master, which breaks version checks (Helm's kubeVersion).
    let mut ldflags = String::from("-s -w");
    for pkg in [
        "k8s.io/component-base/version",
        "k8s.io/client-go/pkg/version",
    ] {
        ldflags.push_str(&format!(
            " -X {pkg}.gitVersion={version} -X {pkg}.gitMajor=1 -X {pkg}.gitMinor={minor} -X {pkg}.gitTreeState=clean"
        ));
    }
    let mut cmd = Command::new("go");
    cmd.current_dir(&module)
        .args(["build", "-trimpath", "-ldflags", &ldflags, "-o"])
        .arg(&tmp)
        .args(
            commands
                .iter()
                .map(|c| format!("k8s.io/kubernetes/cmd/{c}")),
        )
        .env("GOFLAGS", "-mod=mod")
        .env("CGO_ENABLED", "0");
    run(&mut cmd, &format!("go build of {}", commands.join(", ")))?;
    replace_dir(&tmp, bin)
}

/// Name of the pause image containerd runs as each pod's sandbox.
pub const PAUSE_IMAGE: &str = "localhost/mkb-pause:1";

/// The pause image (`xtask/pause/`: a static C program that sleeps, reaps
/// children and exits on SIGTERM) as a docker-archive for `ctr images
/// import`. No registry is reachable, so it is built here: `gcc -static`,
/// then `FROM scratch` with buildah. Cached; the marker holds the sources it
/// was built from, so a changed source rebuilds it.
fn ensure_pause_image() -> Result<PathBuf> {
    let src_dir = paths::workspace().join("xtask/pause");
    let source = std::fs::read_to_string(src_dir.join("pause.c"))
        .with_context(|| format!("read {}", src_dir.join("pause.c").display()))?;
    let dir = paths::cache().join("pause");
    let archive = dir.join("pause.tar");
    let marker = dir.join(".complete");
    let want = format!("{PAUSE_IMAGE}\n{source}");
    if archive.exists() && std::fs::read_to_string(&marker).is_ok_and(|m| m == want) {
        return Ok(archive);
    }
    eprintln!("xtask: building the pause image {PAUSE_IMAGE} (gcc -static, buildah)…");
    let tmp = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    run(
        Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(tmp.join("pause"))
            .arg(src_dir.join("pause.c")),
        "gcc -static of the pause program (Debian packages gcc, libc6-dev)",
    )?;
    std::fs::write(
        tmp.join("Containerfile"),
        "FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT [\"/pause\"]\n",
    )?;
    // A private store: nothing is left in the system's containers-storage.
    let store = tmp.join("store");
    let buildah = |args: &[&str]| {
        let mut cmd = Command::new("buildah");
        cmd.args(["--storage-driver", "vfs", "--root"])
            .arg(store.join("root"))
            .arg("--runroot")
            .arg(store.join("runroot"))
            .args(args);
        cmd
    };
    let context = tmp.display().to_string();
    run(
        &mut buildah(&[
            "bud",
            "--quiet",
            "--isolation",
            "chroot",
            "--layers=false",
            "--tag",
            PAUSE_IMAGE,
            &context,
        ]),
        "buildah bud of the pause image",
    )?;
    let dest = format!(
        "docker-archive:{}:{PAUSE_IMAGE}",
        tmp.join("pause.tar").display()
    );
    run(
        &mut buildah(&["push", "--quiet", PAUSE_IMAGE, &dest]),
        "buildah push of the pause image",
    )?;
    let _ = std::fs::remove_dir_all(&store);
    std::fs::write(tmp.join(".complete"), want)?;
    replace_dir(&tmp, &dir)?;
    Ok(archive)
}

fn ensure_kwok() -> Result<PathBuf> {
    let bin = paths::cache().join("kwok").join(KWOK_VERSION).join("bin");
    let kwok = bin.join("kwok");
    if kwok.exists() {
        return Ok(kwok);
    }
    eprintln!(
        "xtask: building kwok {KWOK_VERSION} from the Go module proxy; first time only, a few minutes…"
    );
    let tmp = bin.with_extension("partial");
    std::fs::create_dir_all(&tmp)?;
    let mut cmd = Command::new("go");
    cmd.args([
        "install",
        &format!("sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}"),
    ])
    .env("GOBIN", &tmp)
    .env("CGO_ENABLED", "0")
    .current_dir(std::env::temp_dir());
    run(&mut cmd, "go install of kwok")?;
    replace_dir(&tmp, &bin)?;
    Ok(kwok)
}

/// Where the cached helm binary is (or will be, after [`ensure_helm`]).
pub fn helm_path() -> PathBuf {
    paths::cache()
        .join("helm")
        .join(HELM_VERSION)
        .join("bin")
        .join("helm")
}

/// Builds helm from the Go module proxy unless cached.
pub fn ensure_helm() -> Result<PathBuf> {
    let helm = helm_path();
    if helm.exists() {
        return Ok(helm);
    }
    let bin = helm.parent().context("helm path has a parent")?;
    eprintln!(
        "xtask: building helm {HELM_VERSION} from the Go module proxy; first time only, a few minutes…"
    );
    let tmp = bin.with_extension("partial");
    std::fs::create_dir_all(&tmp)?;
    let mut cmd = Command::new("go");
    cmd.args([
        "install",
        &format!("helm.sh/helm/v3/cmd/helm@{HELM_VERSION}"),
    ])
    .env("GOBIN", &tmp)
    .env("CGO_ENABLED", "0")
    .current_dir(std::env::temp_dir());
    run(&mut cmd, "go install of helm")?;
    replace_dir(&tmp, bin)?;
    Ok(helm)
}

/// Kafka's command-line tools (`AclCommand`) with their own classpath, fetched once.
pub fn ensure_kafka_tools() -> Result<PathBuf> {
    ensure_maven_classpath("kafka-tools", "tools", "Apache Kafka's tools")
}

/// Fetches the runtime classpath of `xtask/maven/<pom_dir>/pom.xml` into
/// `<cache>/kafka/<version>/<dest>` once.
fn ensure_maven_classpath(pom_dir: &str, dest: &str, what: &str) -> Result<PathBuf> {
    let libs = paths::cache().join("kafka").join(KAFKA_VERSION).join(dest);
    let pom = paths::workspace()
        .join("xtask/maven")
        .join(pom_dir)
        .join("pom.xml");
    let pom_text =
        std::fs::read_to_string(&pom).with_context(|| format!("read {}", pom.display()))?;
    // The marker holds the pom it was fetched with, so a changed pom refetches.
    if std::fs::read_to_string(libs.join(".complete")).is_ok_and(|done| done == pom_text) {
        return Ok(libs);
    }
    eprintln!(
        "xtask: fetching {what} {KAFKA_VERSION} from Maven Central; first time only, about a minute…"
    );
    let tmp = libs.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    let mut cmd = Command::new("mvn");
    cmd.args(["-q", "-B", "-f"])
        .arg(&pom)
        .arg("dependency:copy-dependencies")
        .arg("-DincludeScope=runtime")
        .arg(format!("-DoutputDirectory={}", tmp.display()));
    run(
        &mut cmd,
        &format!("mvn dependency:copy-dependencies for {what}"),
    )?;
    std::fs::write(tmp.join(".complete"), pom_text)?;
    replace_dir(&tmp, &libs)?;
    Ok(libs)
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("start {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status}); see the output above");
    }
    Ok(())
}

fn replace_dir(from: &Path, to: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(to);
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::rename(from, to)
        .with_context(|| format!("move {} to {}", from.display(), to.display()))
}

/// `prometheus` and `promtool` (Debian's `prometheus` package): the
/// monitoring tests check the alert rules with promtool and start their own
/// Prometheus on a loopback port (never the package's system service).
pub fn prometheus_programs() -> Result<(PathBuf, PathBuf)> {
    Ok((
        which("prometheus", "prometheus")?,
        which("promtool", "prometheus")?,
    ))
}

fn which(program: &str, package: &str) -> Result<PathBuf> {
    which_in(program, &[], package)
}

fn which_in(program: &str, extra_dirs: &[&str], package: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(extra_dirs.iter().map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(program);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "`{program}` not found; install the Debian package {package} (`cargo xtask test` does this when run as root)"
    )
}
