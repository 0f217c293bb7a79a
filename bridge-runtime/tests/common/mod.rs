//! Helpers for the integration tests: the real bridge binary, real Kafka
//! and Mosquitto from the test environment.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};

pub const BIN: &str = env!("CARGO_BIN_EXE_bridge-runtime");

/// A running bridge process.
pub struct Bridge {
    pub child: Child,
    pub http: String,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bridge-it-{name}"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

impl Bridge {
    /// Writes `config` (YAML, without the `http` section) and starts the bridge.
    pub fn start(name: &str, config: &str) -> Bridge {
        let dir = temp_dir(name);
        let port = free_port();
        let config_path = dir.join("bridge.yaml");
        let full = format!(
            "{config}\nhttp:\n  address: 127.0.0.1:{port}\nshutdownGracePeriodSeconds: 10\nterminationMessagePath: {}\n",
            dir.join("termination").display()
        );
        std::fs::write(&config_path, full).expect("write config");
        Self::spawn(
            config_path,
            format!("127.0.0.1:{port}"),
            dir.join("bridge.log"),
        )
    }

    fn spawn(config_path: PathBuf, http: String, log_path: PathBuf) -> Bridge {
        let child = Self::spawn_child(&config_path, &log_path);
        Bridge {
            child,
            http,
            config_path,
            log_path,
        }
    }

    fn spawn_child(config_path: &std::path::Path, log_path: &std::path::Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .expect("log file");
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(config_path)
            .env("RUST_LOG", "info,librdkafka=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn bridge")
    }

    /// Starts the same configuration again (after a kill).
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn_child(&self.config_path, &self.log_path);
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&self.http, path)
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("bridge exited with {status}: {}", self.log());
            }
            if let Some((200, _)) = self.get("/readyz") {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "bridge not ready within {timeout:?}: {:?}\n{}",
            self.get("/readyz"),
            self.log()
        );
    }

    pub fn sigterm(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// The value of a metric line starting with `prefix` (summed over matches).
    pub fn metric(&self, prefix: &str) -> f64 {
        self.get("/metrics")
            .map(|(_, body)| {
                body.lines()
                    .filter(|l| l.starts_with(prefix))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum()
            })
            .unwrap_or(0.0)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(address).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// The `mqtt:`/`kafka:` YAML for the plain test servers.
pub fn plain_connections(prefix: &str, protocol: &str) -> String {
    format!(
        "mqtt:\n  url: {}\n  clientIdPrefix: {prefix}\n  protocolVersion: '{protocol}'\nkafka:\n  bootstrapServers: {}\n  producer:\n    lingerMs: 1\n  consumer:\n    autoOffsetReset: earliest\n",
        testenv::var("MQTT_URL"),
        testenv::var("KAFKA_BOOTSTRAP")
    )
}

pub fn kafka_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

pub async fn create_topics(names: &[&str], partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = kafka_config(&testenv::var("KAFKA_BOOTSTRAP"))
        .create()
        .expect("admin client");
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .expect("create topics");
    for r in results {
        if let Err((t, e)) = r {
            assert!(
                e == rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists,
                "create {t}: {e}"
            );
        }
    }
}

/// A record read back from Kafka.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Reads records of `topic` from the beginning until `want` arrived or `timeout`.
pub fn read_topic(topic: &str, want: usize, timeout: Duration) -> Vec<Record> {
    read_topic_until(topic, timeout, |r| r.len() >= want)
}

pub fn read_topic_until(
    topic: &str,
    timeout: Duration,
    mut done: impl FnMut(&[Record]) -> bool,
) -> Vec<Record> {
    let consumer: BaseConsumer = kafka_config(&testenv::var("KAFKA_BOOTSTRAP"))
        .set("group.id", testenv::unique_name("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let start = Instant::now();
    let mut out = Vec::new();
    while start.elapsed() < timeout && !done(&out) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            out.push(Record {
                partition: m.partition(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
    }
    out
}

/// A `read_topic_until` condition: at least `want` distinct payloads read.
/// Counts only the records added since its last call, so reading a large
/// topic stays linear (a full recount per polled record made the readers of
/// 50,000-record topics too slow to finish within their timeout).
pub fn distinct_payloads_at_least(want: usize) -> impl FnMut(&[Record]) -> bool {
    let mut seen = std::collections::HashSet::new();
    let mut counted = 0;
    move |records: &[Record]| {
        for r in &records[counted..] {
            seen.insert(r.payload.clone());
        }
        counted = records.len();
        seen.len() >= want
    }
}

pub async fn produce(topic: &str, key: Option<&str>, payload: &str) {
    let producer: FutureProducer = kafka_config(&testenv::var("KAFKA_BOOTSTRAP"))
        .create()
        .expect("producer");
    let mut record = FutureRecord::to(topic).payload(payload);
    if let Some(k) = key {
        record = record.key(k);
    }
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
}

pub fn header<'a>(r: &'a Record, name: &str) -> Option<&'a [u8]> {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

/// Host and port of an `mqtt://host:port` URL.
pub fn mqtt_host_port(url: &str) -> (String, u16) {
    let rest = url.split("://").nth(1).expect("url");
    let (h, p) = rest.rsplit_once(':').expect("port");
    (h.to_owned(), p.trim_end_matches('/').parse().expect("port"))
}

/// What a test client's subscriptions deliver.
pub type Received = tokio::sync::mpsc::UnboundedReceiver<rumqttc::Publish>;

/// An MQTT 3.1.1 client on the anonymous listener; its event loop runs in a task.
pub async fn mqtt_client(name: &str) -> (rumqttc::AsyncClient, Received) {
    mqtt_client_with_session(name, false).await
}

/// As [`mqtt_client`]; with `persistent` the session survives reconnects, so
/// rumqttc publishes again what the broker had not acknowledged when the
/// connection dropped. A clean-session client silently discards those
/// (rumqttc clears its pending requests when the broker has no session), which
/// would make a publisher, not the bridge, lose messages in fault tests.
pub async fn mqtt_client_with_session(
    name: &str,
    persistent: bool,
) -> (rumqttc::AsyncClient, Received) {
    mqtt_client_with_inflight(name, persistent, 1000).await
}

/// As [`mqtt_client_with_session`] with at most `inflight` unacknowledged
/// publishes. A QoS 2 publisher needs 20 or fewer: Mosquitto silently drops
/// (yet PUBRECs) QoS 2 publishes beyond its `max_inflight_messages`.
pub async fn mqtt_client_with_inflight(
    name: &str,
    persistent: bool,
    inflight: u16,
) -> (rumqttc::AsyncClient, Received) {
    let (client, rx, _) = mqtt_client_counting_acks(name, persistent, inflight).await;
    (client, rx)
}

/// As [`mqtt_client_with_inflight`], also counting the broker's
/// acknowledgements of our publishes (PUBACK for QoS 1, PUBCOMP for QoS 2),
/// so a publisher can wait until the broker has every message before it
/// lets go of the client: `publish().await` only queues a request.
pub async fn mqtt_client_counting_acks(
    name: &str,
    persistent: bool,
    inflight: u16,
) -> (
    rumqttc::AsyncClient,
    Received,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::Ordering;
    let (host, port) = mqtt_host_port(&testenv::var("MQTT_URL"));
    let mut o = rumqttc::MqttOptions::new(testenv::unique_name(name), host, port);
    o.set_clean_session(!persistent);
    o.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_inflight(inflight);
    let (client, mut el) = rumqttc::AsyncClient::new(o, 10_000);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (conn_tx, conn_rx) = tokio::sync::oneshot::channel();
    let mut conn_tx = Some(conn_tx);
    let acks = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = acks.clone();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Incoming::ConnAck(_))) => {
                    if let Some(t) = conn_tx.take() {
                        let _ = t.send(());
                    }
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Incoming::Publish(p))) => {
                    let _ = tx.send(p);
                }
                Ok(rumqttc::Event::Incoming(
                    rumqttc::Incoming::PubAck(_) | rumqttc::Incoming::PubComp(_),
                )) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(rumqttc::ConnectionError::RequestsDone) => return,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), conn_rx)
        .await
        .expect("MQTT connect timeout")
        .expect("MQTT connect");
    (client, rx, acks)
}

/// Cargo runs the tests of one binary in parallel. A test that stops Kafka or
/// Mosquitto would make its neighbours fail (a topic created while Kafka
/// restarts gets "invalid replication factor"), so every test of a binary
/// with fault tests holds this for its whole run.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}
