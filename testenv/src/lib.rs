//! Access to the local test environment from integration tests.
//!
//! `cargo xtask test` starts the servers (or reuses running ones) and passes
//! their addresses to the tests as environment variables; so does
//! `eval "$(cargo xtask testenv env)"` for a test run by hand. Nothing here
//! hard-codes a port.

use std::path::PathBuf;
use std::process::Command;

pub mod prometheus;

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

/// Whether [`kafka_acl`] adds or removes ACLs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AclChange {
    Grant,
    Revoke,
}

/// What a Kafka ACL applies to (literal names, no prefixes or wildcards).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KafkaResource<'a> {
    Topic(&'a str),
    Group(&'a str),
    Cluster,
    TransactionalId(&'a str),
}

/// Kafka's ACL operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KafkaOperation {
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    DescribeConfigs,
    AlterConfigs,
    IdempotentWrite,
    All,
}

impl KafkaOperation {
    /// The name `testenv kafka-acl --operation` takes: the variant's own
    /// (the names Kafka's `AclCommand` uses).
    fn name(self) -> String {
        format!("{self:?}")
    }
}

/// `User:<KAFKA_LIMITED_USER>`: the one SCRAM user of the test Kafka that ACLs
/// restrict (every other principal is a super user). It has no rights until a
/// test grants them with [`kafka_acl`].
pub fn kafka_limited_principal() -> String {
    format!("User:{}", var("KAFKA_LIMITED_USER"))
}

/// Grants or revokes ALLOW ACLs for `principal` on one resource and returns
/// once the broker reports the change (its authorizer decides the next request
/// with it). Takes about two JVM starts, 2-3 s (`cargo xtask testenv kafka-acl`,
/// which runs Kafka's `AclCommand`); panics (tests only) if the change fails.
///
/// What a bridge's Kafka user needs on Kafka 4.1 (checked by
/// `testenv/tests/kafka_acl_smoke.rs`):
/// - MQTT→Kafka (idempotent producer): `Describe` and `Write` on each topic it
///   produces to (a dead-letter topic included). Kafka authorizes the
///   idempotent producer's `InitProducerId` with `IdempotentWrite` on the
///   cluster *or* `Write` on any topic, so `IdempotentWrite` is not needed as
///   long as the user may write to at least one topic when the producer starts.
///   If it may write to none, librdkafka fails `InitProducerId` with
///   ClusterAuthorizationFailed and makes that a *fatal* error: every later
///   send fails with `Fatal` until the producer is recreated, even after the
///   ACLs are granted.
/// - Kafka→MQTT (consumer in a group): `Describe` and `Read` on each topic it
///   consumes, and `Read` on its consumer group (also enough to commit offsets).
pub fn kafka_acl(
    change: AclChange,
    principal: &str,
    resource: KafkaResource<'_>,
    operations: &[KafkaOperation],
) {
    if let Err(e) = run_kafka_acl(change, principal, &resource.ctl_args(), operations) {
        panic!("{e}");
    }
}

/// Grants ALLOW ACLs like [`kafka_acl`] and revokes them when the returned
/// guard is dropped, also when the test panics, so a failed test leaves no
/// rights behind that would change the next test's outcome.
pub fn kafka_grant(
    principal: &str,
    resource: KafkaResource<'_>,
    operations: &[KafkaOperation],
) -> KafkaGrant {
    kafka_acl(AclChange::Grant, principal, resource, operations);
    KafkaGrant {
        principal: principal.to_string(),
        resource_args: resource.ctl_args(),
        operations: operations.to_vec(),
    }
}

/// ACLs granted by [`kafka_grant`]; revoked on drop.
#[must_use = "the ACLs are revoked as soon as this is dropped"]
#[derive(Debug)]
pub struct KafkaGrant {
    principal: String,
    resource_args: Vec<String>,
    operations: Vec<KafkaOperation>,
}

impl Drop for KafkaGrant {
    fn drop(&mut self) {
        // No panic here: this may run while the test is already panicking.
        if let Err(e) = run_kafka_acl(
            AclChange::Revoke,
            &self.principal,
            &self.resource_args,
            &self.operations,
        ) {
            eprintln!("revoking a test's Kafka ACLs failed: {e}");
        }
    }
}

impl KafkaResource<'_> {
    /// The resource options of `testenv kafka-acl`.
    fn ctl_args(self) -> Vec<String> {
        let (flag, name) = match self {
            Self::Topic(t) => ("--topic", Some(t)),
            Self::Group(g) => ("--group", Some(g)),
            Self::Cluster => ("--cluster", None),
            Self::TransactionalId(id) => ("--transactional-id", Some(id)),
        };
        std::iter::once(flag.to_string())
            .chain(name.map(str::to_string))
            .collect()
    }
}

/// Runs `$TESTENV_CTL testenv kafka-acl …`.
fn run_kafka_acl(
    change: AclChange,
    principal: &str,
    resource_args: &[String],
    operations: &[KafkaOperation],
) -> Result<(), String> {
    let ctl = std::env::var("TESTENV_CTL").map_err(|_| "TESTENV_CTL is not set".to_string())?;
    let mut cmd = Command::new(&ctl);
    cmd.args(["testenv", "kafka-acl"]);
    cmd.arg(match change {
        AclChange::Grant => "grant",
        AclChange::Revoke => "revoke",
    });
    cmd.args(["--principal", principal]);
    cmd.args(resource_args);
    for op in operations {
        cmd.args(["--operation", &op.name()]);
    }
    let status = cmd.status().map_err(|e| format!("run {ctl}: {e}"))?;
    if !status.success() {
        return Err(format!(
            "`testenv kafka-acl {change:?} --principal {principal} {} {operations:?}` failed ({status})",
            resource_args.join(" ")
        ));
    }
    Ok(())
}

/// Replaces the ACL file of the Mosquitto listener at `MQTT_ACL_URL` (Mosquitto
/// `acl_file` syntax, e.g. `"user bridge\ntopic read #\n"`) and returns once
/// the broker re-read it (SIGHUP, then its `Reloading config.` log line): every
/// packet sent afterwards, also on connections that were already open, is
/// checked against the new ACL. Panics (tests only) if the broker refuses it.
///
/// The default, restored by [`mqtt_acl_reset`], lets both users
/// (`MQTT_USER`, `MQTT_TEST_USER`) publish and subscribe to everything. An
/// ACL-denied QoS 1 publish gets PUBACK 0x87 (Not authorized) over MQTT 5 and
/// a normal PUBACK (the message dropped) over MQTT 3.1.1.
pub fn mqtt_acl_set(acl: &str) {
    use std::io::Write as _;
    let ctl = var("TESTENV_CTL");
    let mut child = Command::new(&ctl)
        .args(["testenv", "mqtt-acl"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {ctl}: {e}"));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(acl.as_bytes())
        .expect("write the ACL to `testenv mqtt-acl`");
    let status = child.wait().expect("wait for `testenv mqtt-acl`");
    assert!(status.success(), "`testenv mqtt-acl` failed for:\n{acl}");
}

/// Restores the ACL the `MQTT_ACL_URL` listener started with (both users may
/// publish and subscribe to everything), like [`mqtt_acl_set`].
pub fn mqtt_acl_reset() {
    if let Err(e) = run_mqtt_acl_reset() {
        panic!("{e}");
    }
}

/// Sets the ACL like [`mqtt_acl_set`] and restores the default when the
/// returned guard is dropped, also when the test panics. The ACL is
/// broker-wide state: tests that change it must not run at the same time as
/// other tests on `MQTT_ACL_URL` (one test per binary, or one after another).
pub fn mqtt_acl_override(acl: &str) -> MqttAclOverride {
    mqtt_acl_set(acl);
    MqttAclOverride { _private: () }
}

/// An ACL set by [`mqtt_acl_override`]; the default comes back on drop.
#[must_use = "the default ACL comes back as soon as this is dropped"]
#[derive(Debug)]
pub struct MqttAclOverride {
    _private: (),
}

impl Drop for MqttAclOverride {
    fn drop(&mut self) {
        // No panic here: this may run while the test is already panicking.
        if let Err(e) = run_mqtt_acl_reset() {
            eprintln!("restoring the default MQTT ACL failed: {e}");
        }
    }
}

fn run_mqtt_acl_reset() -> Result<(), String> {
    let ctl = std::env::var("TESTENV_CTL").map_err(|_| "TESTENV_CTL is not set".to_string())?;
    let status = Command::new(&ctl)
        .args(["testenv", "mqtt-acl", "--reset"])
        .stdin(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("run {ctl}: {e}"))?;
    if !status.success() {
        return Err(format!("`testenv mqtt-acl --reset` failed ({status})"));
    }
    Ok(())
}

/// A binary of this workspace, built by `cargo test --workspace` (or
/// `cargo build -p <name>`) next to the test executables' directory.
pub fn cargo_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: `cargo xtask test` builds it (or `cargo build -p {name}`)",
        path.display()
    );
    path
}
