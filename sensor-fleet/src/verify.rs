//! Verifiers: consume what a simulator sent (from Kafka or MQTT) into a
//! [`Tracker`] until the expected count arrived, the stream went idle, or a
//! deadline passed. The expectation may be set while the verifier runs
//! (the simulator's count is known only when it has finished).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::accounting::Tracker;
use crate::conn::{KafkaEndpoint, MqttEndpoint};
use crate::payload;

/// When a verifier stops, and its live counts.
#[derive(Debug)]
pub struct Control {
    /// Stop once this many distinct readings arrived (`u64::MAX`: not known yet).
    expected: AtomicU64,
    deadline: Instant,
    /// Stop after this long without a message, once something arrived or the
    /// expectation is known.
    idle: Duration,
    cancel: AtomicBool,
    /// Messages received so far (duplicates included).
    pub received: AtomicU64,
    /// Distinct readings so far.
    pub unique: AtomicU64,
    last_us: AtomicU64,
}

impl Control {
    pub fn new(timeout: Duration, idle: Duration) -> Arc<Self> {
        Arc::new(Self {
            expected: AtomicU64::new(u64::MAX),
            deadline: Instant::now() + timeout,
            idle,
            cancel: AtomicBool::new(false),
            received: AtomicU64::new(0),
            unique: AtomicU64::new(0),
            last_us: AtomicU64::new(payload::now_micros()),
        })
    }

    /// Stop once `n` distinct readings have arrived.
    pub fn set_expected(&self, n: u64) {
        self.expected.store(n, Ordering::Relaxed);
        self.last_us
            .fetch_max(payload::now_micros(), Ordering::Relaxed);
    }

    /// Stop now.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    fn note(&self, t: &Tracker) {
        self.received.store(t.received(), Ordering::Relaxed);
        self.unique.store(t.unique(), Ordering::Relaxed);
    }

    /// A message arrived at `now_us` (the idle clock restarts).
    fn touch(&self, now_us: u64) {
        self.last_us.store(now_us, Ordering::Relaxed);
    }

    /// Why to stop, if it is time.
    pub fn done(&self) -> Option<&'static str> {
        let unique = self.unique.load(Ordering::Relaxed);
        let expected = self.expected.load(Ordering::Relaxed);
        if unique >= expected {
            return Some("expected count reached");
        }
        if self.cancel.load(Ordering::Relaxed) {
            return Some("cancelled");
        }
        if Instant::now() >= self.deadline {
            return Some("timeout");
        }
        let armed = expected != u64::MAX || self.received.load(Ordering::Relaxed) > 0;
        let idle_us = payload::now_micros().saturating_sub(self.last_us.load(Ordering::Relaxed));
        if armed && idle_us >= self.idle.as_micros() as u64 {
            return Some("idle");
        }
        None
    }
}

/// A running verifier.
pub struct Verifier {
    pub control: Arc<Control>,
    task: tokio::task::JoinHandle<Result<(Tracker, &'static str)>>,
}

impl Verifier {
    /// Waits until it stops; returns what it saw and why it stopped.
    pub async fn finish(self) -> Result<(Tracker, &'static str)> {
        self.task.await.context("verifier task panicked")?
    }
}

/// Where a Kafka verifier starts reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StartAt {
    /// The oldest retained record.
    Beginning,
    /// Only records produced after the verifier started.
    End,
}

/// Starts consuming `topic` (every partition, no consumer group). Returns
/// once the start offsets are fixed, so whatever is produced afterwards is seen.
pub async fn kafka(
    endpoint: &KafkaEndpoint,
    topic: &str,
    start_at: StartAt,
    control: Arc<Control>,
) -> Result<Verifier> {
    kafka_clocked(endpoint, topic, start_at, control, Clock::Arrival).await
}

/// Which time a Kafka verifier takes as a record's arrival.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// When the verifier read it (latency is end to end).
    Arrival,
    /// The record's timestamp (CreateTime: when the producer made it), so a
    /// verifier that started late still measures the producer's pace.
    Record,
}

/// [`kafka`] with a choice of [`Clock`].
pub async fn kafka_clocked(
    endpoint: &KafkaEndpoint,
    topic: &str,
    start_at: StartAt,
    control: Arc<Control>,
    clock: Clock,
) -> Result<Verifier> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = endpoint
        .client_config()
        .set(
            "group.id",
            format!("sensor-fleet-verify-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .set("enable.partition.eof", "false")
        .create()
        .context("create Kafka consumer")?;
    let topic = topic.to_owned();
    let setup = {
        let topic = topic.clone();
        tokio::task::spawn_blocking(move || -> Result<BaseConsumer> {
            let md = consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .context("fetch topic metadata")?;
            let parts: Vec<i32> = md
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            if parts.is_empty() {
                bail!("Kafka topic {topic} has no partitions (does it exist?)");
            }
            let mut tpl = TopicPartitionList::new();
            for p in parts {
                let offset = match start_at {
                    StartAt::Beginning => Offset::Beginning,
                    StartAt::End => {
                        let (_, high) = consumer
                            .fetch_watermarks(&topic, p, Duration::from_secs(10))
                            .context("fetch watermarks")?;
                        Offset::Offset(high)
                    }
                };
                tpl.add_partition_offset(&topic, p, offset)
                    .context("build assignment")?;
            }
            consumer.assign(&tpl).context("assign partitions")?;
            Ok(consumer)
        })
    };
    let consumer = setup.await.context("setup thread panicked")??;
    let c = control.clone();
    let task = tokio::task::spawn_blocking(move || {
        use rdkafka::message::Message;
        let mut t = Tracker::new();
        let mut errors = 0u32;
        let mut batch = 0u32;
        loop {
            match consumer.poll(Duration::from_millis(50)) {
                Some(Ok(m)) => {
                    let read = payload::now_micros();
                    c.touch(read);
                    let now = match (clock, m.timestamp().to_millis()) {
                        (Clock::Record, Some(ms)) if ms > 0 => ms as u64 * 1000,
                        _ => read,
                    };
                    match m.payload().and_then(payload::decode) {
                        Some(r) => {
                            t.record(&r.sensor_id, r.seq, r.timestamp, now, Some(m.partition()))
                        }
                        None => t.record_malformed(),
                    }
                    batch += 1;
                    // Publishing the counts on every message would cost more than the parsing.
                    if batch < 256 {
                        continue;
                    }
                }
                Some(Err(e)) => {
                    errors += 1;
                    if errors <= 5 {
                        eprintln!("sensor-fleet: Kafka consume error: {e}");
                    }
                }
                None => {}
            }
            if batch > 0 {
                c.note(&t);
                batch = 0;
            }
            if let Some(why) = c.done() {
                return Ok((t, why));
            }
        }
    });
    Ok(Verifier { control, task })
}

/// MQTT subscriber settings.
#[derive(Clone, Debug)]
pub struct MqttSub {
    pub endpoint: MqttEndpoint,
    pub filter: String,
    pub qos: u8,
    /// Connections; with more than one they form a shared subscription.
    pub connections: usize,
    /// MQTT 5 (with `receive_maximum`) instead of 3.1.1.
    pub v5: bool,
    /// MQTT 5 Receive Maximum (how many unacknowledged messages the broker may send).
    pub receive_maximum: u16,
    pub client_id_prefix: String,
    /// Decode and account each message; off, it only acknowledges and counts
    /// (the broker's ceiling, measured with the least client work).
    pub account: bool,
    /// Keep the broker session (seconds it outlives the connection over
    /// MQTT 5; MQTT 3.1.1 sessions persist until cleaned): messages published
    /// while disconnected wait for the next connection with the same ids.
    pub session_expiry: Option<u32>,
}

impl MqttSub {
    pub fn new(endpoint: MqttEndpoint, filter: impl Into<String>) -> Self {
        Self {
            endpoint,
            filter: filter.into(),
            qos: 1,
            connections: 1,
            v5: false,
            receive_maximum: 1000,
            client_id_prefix: format!("sensor-fleet-verify-{}", std::process::id()),
            account: true,
            session_expiry: None,
        }
    }

    fn filter_for_connections(&self) -> String {
        if self.connections > 1 {
            format!("$share/{}/{}", self.client_id_prefix, self.filter)
        } else {
            self.filter.clone()
        }
    }
}

type Shared = Arc<Mutex<Tracker>>;

fn on_message(shared: &Shared, control: &Control, body: &[u8], account: bool) {
    let now = payload::now_micros();
    control.touch(now);
    if !account {
        control.received.fetch_add(1, Ordering::Relaxed);
        control.unique.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let Ok(mut t) = shared.lock() else { return };
    match payload::decode(body) {
        Some(r) => t.record(&r.sensor_id, r.seq, r.timestamp, now, None),
        None => t.record_malformed(),
    }
    if t.received() % 64 == 1 {
        control.note(&t);
    }
}

/// Subscribes to `sub.filter`; returns once every connection's subscription
/// is acknowledged, so whatever is published afterwards is seen.
pub async fn mqtt(sub: &MqttSub, control: Arc<Control>) -> Result<Verifier> {
    let shared: Shared = Arc::new(Mutex::new(Tracker::new()));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<Result<()>>(sub.connections.max(1));
    let mut conns = Vec::new();
    let filter = sub.filter_for_connections();
    for i in 0..sub.connections.max(1) {
        let id = format!("{}-{i}", sub.client_id_prefix);
        let (shared, control, ready, filter) = (
            shared.clone(),
            control.clone(),
            ready_tx.clone(),
            filter.clone(),
        );
        let account = sub.account;
        let qos = sub.qos;
        if sub.v5 {
            let mut o = sub.endpoint.options_v5(&id)?;
            o.set_receive_maximum(Some(sub.receive_maximum))
                .set_clean_start(sub.session_expiry.is_none())
                .set_session_expiry_interval(sub.session_expiry);
            conns.push(tokio::spawn(sub_v5(
                o, filter, qos, shared, control, ready, account,
            )));
        } else {
            let mut o = sub.endpoint.options_v311(&id)?;
            o.set_clean_session(sub.session_expiry.is_none());
            conns.push(tokio::spawn(sub_v311(
                o, filter, qos, shared, control, ready, account,
            )));
        }
    }
    drop(ready_tx);
    for _ in 0..sub.connections.max(1) {
        match tokio::time::timeout(Duration::from_secs(15), ready_rx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => return Err(e),
            Ok(None) => bail!("MQTT subscriber ended before subscribing"),
            Err(_) => bail!("MQTT subscription not acknowledged within 15 s"),
        }
    }
    let c = control.clone();
    let task = tokio::spawn(async move {
        let why = loop {
            if let Some(why) = c.done() {
                break why;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Ok(t) = shared.lock()
                && t.received() > 0
            {
                c.note(&t);
            }
        };
        for conn in conns {
            conn.abort();
        }
        let t = std::mem::take(
            &mut *shared
                .lock()
                .map_err(|_| anyhow::anyhow!("tracker poisoned"))?,
        );
        Ok((t, why))
    });
    Ok(Verifier { control, task })
}

async fn sub_v311(
    o: rumqttc::MqttOptions,
    filter: String,
    qos: u8,
    shared: Shared,
    control: Arc<Control>,
    ready: tokio::sync::mpsc::Sender<Result<()>>,
    account: bool,
) {
    use rumqttc::{Event, Packet, QoS};
    let (client, mut el) = rumqttc::AsyncClient::new(o, 64);
    let q = match qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    if let Err(e) = client.subscribe(filter.as_str(), q).await {
        let _ = ready.send(Err(anyhow::anyhow!("subscribe: {e}"))).await;
        return;
    }
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                on_message(&shared, &control, &p.payload, account)
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                let _ = ready.send(Ok(())).await;
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("sensor-fleet: MQTT subscriber error (reconnecting): {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                // A clean session lost the subscription: ask again.
                let _ = client.try_subscribe(filter.as_str(), q);
            }
        }
    }
}

async fn sub_v5(
    o: rumqttc::v5::MqttOptions,
    filter: String,
    qos: u8,
    shared: Shared,
    control: Arc<Control>,
    ready: tokio::sync::mpsc::Sender<Result<()>>,
    account: bool,
) {
    use rumqttc::v5::Event;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    let (client, mut el) = rumqttc::v5::AsyncClient::new(o, 64);
    let q = match qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    if let Err(e) = client.subscribe(filter.as_str(), q).await {
        let _ = ready.send(Err(anyhow::anyhow!("subscribe: {e}"))).await;
        return;
    }
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                on_message(&shared, &control, &p.payload, account)
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                let _ = ready.send(Ok(())).await;
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("sensor-fleet: MQTT subscriber error (reconnecting): {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = client.try_subscribe(filter.as_str(), q);
            }
        }
    }
}
