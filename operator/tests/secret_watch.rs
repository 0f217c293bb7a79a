//! Secrets the bridges do not reference cost the operator next to nothing:
//! with 300 unrelated Secrets of 60 KiB in the watched namespace, the
//! operator binary (signed in as the chart's ServiceAccount) receives their
//! metadata only, and its memory stays flat. The bytes it reads from the
//! API server are counted by a TCP relay between the two; its memory is the
//! resident set size the kernel reports. Run with `--nocapture` to see the
//! figures.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, ResourceExt};

const HIVEMQ: &str = include_str!("../../deploy/examples/hivemq-confluent.yaml");
const BRIDGE: &str = "hivemq-confluent";
const UNRELATED: usize = 300;
const SECRET_SIZE: usize = 60 * 1024;
const MIB: f64 = 1024.0 * 1024.0;

/// A TCP relay to the API server counting the bytes it sends back.
struct Relay {
    address: SocketAddr,
    received: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let up = tokio::io::copy(&mut client_read, &mut server_write);
                    let down = async {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match server_read.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            counter.fetch_add(n as u64, Ordering::Relaxed);
                            if client_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = client_write.shutdown().await;
                    };
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Self {
            address,
            received,
            task,
        }
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The API server's address, from the admin kubeconfig.
async fn api_server() -> SocketAddr {
    let text = std::fs::read_to_string(testenv::var("KUBECONFIG")).unwrap();
    let config: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let server = config["clusters"][0]["cluster"]["server"].as_str().unwrap();
    let authority = server
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    tokio::net::lookup_host(authority)
        .await
        .unwrap()
        .next()
        .unwrap()
}

/// The operator binary, killed when dropped.
struct Binary {
    child: Child,
    _kubeconfig: TempFile,
}

struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Binary {
    fn spawn(kubeconfig: &serde_json::Value, ns: &str) -> Self {
        let path = std::env::temp_dir().join(testenv::unique_name("secret-watch-kubeconfig"));
        std::fs::write(&path, kubeconfig.to_string()).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_operator"))
            .args([
                "--bridge-image=registry.example/bridge-runtime:test",
                "--http-address=127.0.0.1:0",
                "--log-format=text",
                &format!("--namespace={ns}"),
            ])
            .env("KUBECONFIG", &path)
            .env("RUST_LOG", "warn")
            .env_remove("LEADER_ELECTION")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the operator binary");
        Self {
            child,
            _kubeconfig: TempFile(path),
        }
    }

    /// Resident set size in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS");
        kb * 1024
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes that look random, so no layer could compress them away.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Rotates the bridge's MQTT password and waits until the operator has
/// rolled the new Secret version onto the pod template: it has then also
/// received every Secret event before that one.
async fn rotate_and_wait(client: &kube::Client, ns: &str, password: &str) {
    put_secret(client, ns, "hivemq-credentials", &[("password", password)]).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let version = secrets
        .get("hivemq-credentials")
        .await
        .unwrap()
        .resource_version()
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wait_for(
        "the rotated Secret on the pod template",
        Duration::from_secs(120),
        || async {
            let d = deployments.get(&format!("{BRIDGE}-0")).await.ok()?;
            let annotations = d.spec?.template.metadata?.annotations?;
            annotations
                .get(operator::build::SECRET_VERSIONS_ANNOTATION)?
                .contains(&format!("/{version}"))
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn unrelated_secrets_reach_the_operator_as_metadata_only() {
    let admin = client().await;
    let ns = namespace(&admin, "secret-watch").await;
    install_chart_rbac(&admin, &ns).await;
    let token = service_account_token(&admin, &ns).await;
    let upstream = api_server().await;

    // The bridge first, waiting for its Secrets.
    put_secret(&admin, &ns, "confluent-credentials", &[("api-secret", "k")]).await;
    apply_bridge(&admin, &ns, &HIVEMQ.replace("replicas: 2", "replicas: 1")).await;

    let relay = Relay::start(upstream).await;
    let op = Binary::spawn(
        &token_kubeconfig(&token, Some(&format!("https://{}", relay.address))),
        &ns,
    );
    // Ready only once the Secret watch delivered the missing Secret.
    put_secret(&admin, &ns, "hivemq-credentials", &[("password", "p0")]).await;
    wait_ready(&admin, &ns, BRIDGE, "True", "Available").await;
    let (bytes0, rss0) = (relay.received(), op.rss());

    // 300 unrelated Secrets of 60 KiB arrive while the operator watches.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    futures::stream::iter(0..UNRELATED)
        .map(|i| {
            let secrets = secrets.clone();
            async move {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(format!("unrelated-{i}")),
                        ..Default::default()
                    },
                    data: Some(
                        [("blob".to_string(), ByteString(noise(i as u64, SECRET_SIZE)))].into(),
                    ),
                    ..Default::default()
                };
                secrets
                    .create(&PostParams::default(), &secret)
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    rotate_and_wait(&admin, &ns, "p1").await;
    let (bytes1, rss1) = (relay.received(), op.rss());
    drop(op);
    drop(relay);

    // A restarted operator lists them all.
    let relay = Relay::start(upstream).await;
    let op = Binary::spawn(
        &token_kubeconfig(&token, Some(&format!("https://{}", relay.address))),
        &ns,
    );
    rotate_and_wait(&admin, &ns, "p2").await;
    let (bytes2, rss2) = (relay.received(), op.rss());

    let total = (UNRELATED * SECRET_SIZE) as f64 / MIB;
    eprintln!(
        "{UNRELATED} unrelated Secrets of {} KiB ({total:.1} MiB of values):\n\
         - watching while they were created: read {:.2} MiB from the API server \
         (before them: {:.2} MiB), RSS {:.1} -> {:.1} MiB\n\
         - starting with them present (initial list) until reconciled: read {:.2} MiB, RSS {:.1} MiB",
        SECRET_SIZE / 1024,
        (bytes1 - bytes0) as f64 / MIB,
        bytes0 as f64 / MIB,
        rss0 as f64 / MIB,
        rss1 as f64 / MIB,
        bytes2 as f64 / MIB,
        rss2 as f64 / MIB,
    );
    // Values are over 23 MiB (base64 in JSON; a full watch read 23.7 MiB
    // here); their metadata is a few hundred bytes each (0.2 MiB).
    let limit = 2.0 * MIB;
    assert!(
        ((bytes1 - bytes0) as f64) < limit,
        "the watch delivered {:.1} MiB",
        (bytes1 - bytes0) as f64 / MIB
    );
    assert!(
        (bytes2 as f64) < limit,
        "the start-up list delivered {:.1} MiB",
        bytes2 as f64 / MIB
    );
    // A full watch: 27.7 -> 46.0 MiB after the start-up list (measured).
    let flat = 8.0 * MIB;
    assert!(
        (rss1 as f64) < rss0 as f64 + flat && (rss2 as f64) < rss0 as f64 + flat,
        "RSS grew: {:.1} -> {:.1} / {:.1} MiB",
        rss0 as f64 / MIB,
        rss1 as f64 / MIB,
        rss2 as f64 / MIB
    );
    drop(op);
    drop_namespace(&admin, &ns).await;
}
