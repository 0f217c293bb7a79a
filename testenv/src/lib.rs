//! Access to the local test environment from integration tests.
//!
//! `cargo xtask test` starts the servers (or reuses running ones) and passes
//! their addresses to the tests as environment variables; so does
//! `eval "$(cargo xtask testenv env)"` for a test run by hand. Nothing here
//! hard-codes a port.

use std::path::PathBuf;
use std::process::Command;

/// The value of a test-environment variable such as `KAFKA_BOOTSTRAP`.
///
/// Panics (tests only) with the command that provides it when it is unset.
pub fn var(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: run the tests with `cargo xtask test`, or \
             `cargo xtask testenv up && eval \"$(cargo xtask testenv env)\"` first"
        ),
    }
}

/// Installs the process-wide rustls crypto provider (ring); every test that
/// opens a TLS connection (kube, rumqttc) calls this first. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An admin client for the test control plane.
pub async fn kube_client() -> kube::Client {
    install_crypto_provider();
    let path = PathBuf::from(var("KUBECONFIG"));
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("read KUBECONFIG");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("load KUBECONFIG");
    kube::Client::try_from(config).expect("build kube client")
}

/// A name no other test (or earlier run) uses: `<prefix>-<pid>-<counter>`.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{}", std::process::id(), nanos % 10_000)
}

/// Stops, starts or restarts one server (`kafka`, `mqtt`, `apiserver`, …)
/// keeping its data and port, for fault tests. Blocks until it is done
/// (for `start`/`restart`: until the server accepts connections again).
pub fn control(action: &str, server: &str) {
    let ctl = var("TESTENV_CTL");
    let status = Command::new(&ctl)
        .args(["testenv", action, server])
        .status()
        .unwrap_or_else(|e| panic!("run {ctl}: {e}"));
    assert!(status.success(), "`testenv {action} {server}` failed");
}

/// Host and port of an `mqtt://` or `mqtts://` URL from the environment.
pub fn mqtt_host_port(url_var: &str) -> (String, u16) {
    let url = var(url_var);
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or_else(|| panic!("{url_var}={url} has no scheme"));
    let (host, port) = rest
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{url_var}={url} has no port"));
    (
        host.to_string(),
        port.parse()
            .unwrap_or_else(|_| panic!("{url_var}={url}: bad port")),
    )
}
