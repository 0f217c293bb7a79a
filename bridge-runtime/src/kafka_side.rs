//! The Kafka clients: configuration (security, idempotent producer, bounded
//! queue), the producer whose delivery reports drive acknowledgements, the
//! consumer group, and the topic check behind `/readyz`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bridge_core::{Compression, KafkaAuthenticationType};
use bytes::Bytes;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use tokio::sync::mpsc::UnboundedSender;

use crate::config::ValidatedConfig;
use crate::error::BridgeError;
use crate::metrics::Observability;
use bridge_core::routes::ORIGIN_HEADER;

/// A record handed to the producer, kept until Kafka confirmed it so a
/// failed delivery can be sent again.
#[derive(Debug)]
pub struct PendingRecord {
    /// Who waits for the report.
    pub owner: Owner,
    /// Connection epoch the record belongs to (reports of older epochs are ignored).
    pub epoch: u64,
    /// Ack-tracker sequence number; `None` for untracked (QoS 0) messages.
    pub seq: Option<u64>,
    /// Arrival number within its pipeline: held records are sent again in this order.
    pub order: u64,
    /// Kafka→MQTT dead letters: the partition (state index) the record came from.
    pub partition: Option<usize>,
    /// Index of the route (in its direction's list).
    pub route: usize,
    /// Whether this is a dead-letter record.
    pub dead_letter: bool,
    /// When it was first sent.
    pub received: Instant,
    /// When it was handed to the producer this time.
    pub sent: Instant,
    /// Kafka topic (shared with the route for fixed topics).
    pub topic: Arc<str>,
    /// Record key.
    pub key: Option<Bytes>,
    /// Record payload.
    pub payload: Bytes,
    /// Record headers, besides the origin header [`send`] adds to every record.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Who receives a delivery report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// MQTT→Kafka connection `i`.
    Mqtt(usize),
    /// The Kafka→MQTT pipeline (its dead letters).
    KafkaToMqtt,
}

/// The outcome of one record.
#[derive(Debug)]
pub struct DeliveryReport {
    /// The record.
    pub record: Box<PendingRecord>,
    /// `Ok` once the brokers (acks=all) have it.
    pub result: Result<(), KafkaError>,
}

/// A consumer group rebalance, as the Kafka→MQTT pipeline must hear of it.
#[derive(Debug)]
pub enum Rebalance {
    /// These partitions are no longer ours: forget their state.
    Revoked(Vec<(String, i32)>),
    /// These partitions are ours now.
    Assigned(Vec<(String, i32)>),
}

/// Routes delivery reports to their owners and watches client errors.
pub struct BridgeKafkaContext {
    mqtt_owners: Vec<UnboundedSender<DeliveryReport>>,
    k2m_owner: Option<UnboundedSender<DeliveryReport>>,
    rebalances: Option<UnboundedSender<Rebalance>>,
    observability: Arc<Observability>,
    fatal: UnboundedSender<BridgeError>,
}

impl ClientContext for BridgeKafkaContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        match code {
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => {
                let _ = self
                    .fatal
                    .send(BridgeError::KafkaAuthentication(reason.to_owned()));
            }
            // The idempotent producer cannot go on (e.g. its sequence numbers
            // broke): restart; unacknowledged messages are redelivered.
            Some(RDKafkaErrorCode::Fatal) => {
                let _ = self.fatal.send(BridgeError::Kafka(format!(
                    "fatal producer error: {reason}"
                )));
            }
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                self.observability
                    .health
                    .kafka_reachable
                    .store(false, Ordering::Relaxed);
                tracing::warn!(%reason, "all Kafka brokers down");
            }
            _ => tracing::warn!(error = %error, %reason, "Kafka client error"),
        }
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{log_message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{log_message}"),
            _ => tracing::debug!(target: "librdkafka", fac, "{log_message}"),
        }
    }
}

impl ProducerContext for BridgeKafkaContext {
    type DeliveryOpaque = Box<PendingRecord>;

    fn delivery(&self, result: &DeliveryResult<'_>, record: Self::DeliveryOpaque) {
        self.observability
            .metrics
            .kafka_delivery_latency
            .observe(record.sent.elapsed().as_secs_f64());
        let result = match result {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(e.clone()),
        };
        let owner = match record.owner {
            Owner::Mqtt(i) => self.mqtt_owners.get(i),
            Owner::KafkaToMqtt => self.k2m_owner.as_ref(),
        };
        if let Some(tx) = owner {
            let _ = tx.send(DeliveryReport { record, result });
        }
    }
}

/// The partitions of a rebalance as (topic, partition) pairs.
fn partitions_of(list: &rdkafka::TopicPartitionList) -> Vec<(String, i32)> {
    list.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl ConsumerContext for BridgeKafkaContext {
    // Runs inside the consumer's poll, before librdkafka revokes: the
    // pipeline hears of it before it sees any record of the next assignment.
    fn pre_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if let (Some(tx), rdkafka::consumer::Rebalance::Revoke(list)) =
            (&self.rebalances, rebalance)
        {
            let partitions = partitions_of(list);
            self.observability
                .metrics
                .partitions_revoked
                .inc_by(partitions.len() as u64);
            let _ = tx.send(Rebalance::Revoked(partitions));
        }
    }

    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if let (Some(tx), rdkafka::consumer::Rebalance::Assign(list)) =
            (&self.rebalances, rebalance)
        {
            let _ = tx.send(Rebalance::Assigned(partitions_of(list)));
        }
    }
}

/// The producer shared by every pipeline.
pub type BridgeProducer = ThreadedProducer<BridgeKafkaContext>;

/// Security and connection properties common to producer and consumer.
pub fn base_config(config: &ValidatedConfig) -> ClientConfig {
    let kafka = &config.config.kafka;
    let secrets = &config.secrets;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.bootstrap_servers);
    c.set("client.id", format!("{}-{}", config.origin(), config.slot));
    let sasl = kafka
        .authentication
        .as_ref()
        .filter(|a| a.kind != KafkaAuthenticationType::None);
    let protocol = match (kafka.tls.is_some(), sasl.is_some()) {
        (false, false) => "plaintext",
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    };
    c.set("security.protocol", protocol);
    if let Some(auth) = sasl {
        let mechanism = match auth.kind {
            KafkaAuthenticationType::Plain => "PLAIN",
            KafkaAuthenticationType::ScramSha256 => "SCRAM-SHA-256",
            KafkaAuthenticationType::ScramSha512 => "SCRAM-SHA-512",
            KafkaAuthenticationType::None => "",
        };
        c.set("sasl.mechanism", mechanism);
        if let Some(u) = &auth.username {
            c.set("sasl.username", u);
        }
        if let Some(p) = &secrets.kafka_password {
            c.set("sasl.password", p.text());
        }
    }
    if let Some(ca) = &secrets.kafka_ca {
        c.set("ssl.ca.pem", String::from_utf8_lossy(ca.bytes()));
    }
    if let Some(cert) = &secrets.kafka_client_certificate {
        c.set("ssl.certificate.pem", String::from_utf8_lossy(cert.bytes()));
    }
    if let Some(key) = &secrets.kafka_client_key {
        c.set("ssl.key.pem", String::from_utf8_lossy(key.bytes()));
    }
    for (k, v) in &kafka.properties {
        c.set(k, v);
    }
    c.set_log_level(RDKafkaLogLevel::Warning);
    c
}

/// Creates the context; report channels are given per owner.
pub fn context(
    mqtt_owners: Vec<UnboundedSender<DeliveryReport>>,
    k2m_owner: Option<UnboundedSender<DeliveryReport>>,
    rebalances: Option<UnboundedSender<Rebalance>>,
    observability: Arc<Observability>,
    fatal: UnboundedSender<BridgeError>,
) -> BridgeKafkaContext {
    BridgeKafkaContext {
        mqtt_owners,
        k2m_owner,
        rebalances,
        observability,
        fatal,
    }
}

/// The idempotent, acks=all producer with a bounded queue.
pub fn producer(
    config: &ValidatedConfig,
    context: BridgeKafkaContext,
) -> Result<BridgeProducer, BridgeError> {
    let p = &config.config.kafka.producer;
    let mut c = base_config(config);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "compression.type",
            match p.compression {
                Compression::None => "none",
                Compression::Gzip => "gzip",
                Compression::Snappy => "snappy",
                Compression::Lz4 => "lz4",
                Compression::Zstd => "zstd",
            },
        )
        .set("linger.ms", p.linger_ms.to_string())
        .set(
            "queue.buffering.max.messages",
            p.max_in_flight_records.to_string(),
        )
        .set("queue.buffering.max.kbytes", p.queue_max_kbytes.to_string())
        .set("delivery.timeout.ms", p.delivery_timeout_ms.to_string())
        .set("message.max.bytes", p.max_message_bytes.to_string());
    c.create_with_context(context)
        .map_err(|e| BridgeError::Kafka(format!("creating the producer: {e}")))
}

/// The consumer of the Kafka→MQTT routes: offsets are stored and committed
/// only by the bridge, after MQTT acknowledged.
pub fn consumer(
    config: &ValidatedConfig,
    context: BridgeKafkaContext,
) -> Result<StreamConsumer<BridgeKafkaContext>, BridgeError> {
    let mut c = base_config(config);
    c.set("group.id", config.group_id())
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.offset.reset",
            match config.config.kafka.consumer.auto_offset_reset {
                bridge_core::AutoOffsetReset::Earliest => "earliest",
                bridge_core::AutoOffsetReset::Latest => "latest",
            },
        );
    // librdkafka prefetches up to 100,000 records per partition and 64 MiB
    // by default, and keeps each fetch response in memory: most of the
    // bridge's memory, for records the in-flight window cannot take yet.
    // The prefetch is sized from that window instead (`kafka.properties`
    // can override each).
    for (key, value) in consumer_prefetch(config.config.max_in_flight_publishes) {
        if !config.config.kafka.properties.contains_key(key) {
            c.set(key, value);
        }
    }
    c.create_with_context(context)
        .map_err(|e| BridgeError::Kafka(format!("creating the consumer: {e}")))
}

/// The consumer's prefetch, from the Kafka→MQTT in-flight window: a few
/// windows of records queued, fetches of at most 1 MiB. At the
/// backlog-drain benchmark's 100-byte records this keeps the publishers fed
/// (bench/RESULTS.md); larger records are fetched one at a time whatever
/// the limits say, so nothing is ever too large to consume.
fn consumer_prefetch(max_in_flight_publishes: u32) -> [(&'static str, String); 5] {
    let records = max_in_flight_publishes.max(100);
    [
        ("queued.min.messages", records.to_string()),
        ("queued.max.messages.kbytes", "2048".to_owned()),
        ("fetch.max.bytes", (1024 * 1024).to_string()),
        ("max.partition.fetch.bytes", (256 * 1024).to_string()),
        // With a small prefetch the queue is often "full": fetch again soon
        // after it drains, not after librdkafka's default second.
        ("fetch.queue.backoff.ms", "10".to_owned()),
    ]
}

/// Hands a record to the producer with the loop-prevention header naming
/// `origin` (this bridge). On a full queue the record comes back
/// (backpressure): the caller waits and tries again.
pub fn send(
    producer: &BridgeProducer,
    record: Box<PendingRecord>,
    origin: &str,
) -> Result<(), (KafkaError, Box<PendingRecord>)> {
    let mut headers = OwnedHeaders::new_with_capacity(record.headers.len() + 1);
    for (k, v) in &record.headers {
        headers = headers.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    headers = headers.insert(Header {
        key: ORIGIN_HEADER,
        value: Some(origin.as_bytes()),
    });
    // The record moves into the producer as its opaque; topic, key and
    // payload are borrowed from shared handles of it (reference counts, no
    // copies on our side; librdkafka copies them and the headers).
    let topic = record.topic.clone();
    let key = record.key.clone();
    let payload = record.payload.clone();
    let mut base = BaseRecord::with_opaque_to(&topic, record)
        .payload(payload.as_ref())
        .headers(headers);
    if let Some(k) = &key {
        base = base.key(k.as_ref());
    }
    producer.send(base).map_err(|(e, r)| (e, r.delivery_opaque))
}

/// How long the last offset commit of a drain may wait for Kafka.
pub const FINAL_COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Commits `offsets` and waits for Kafka's answer, at most `limit`.
/// librdkafka's synchronous commit has no timeout of its own: with the
/// group coordinator gone it waits for ever, and a bridge draining during a
/// Kafka outage never exited. Past `limit` the commit is left behind on its
/// blocking thread; the records since the last commit are consumed again.
pub async fn commit_within(
    consumer: &Arc<StreamConsumer<BridgeKafkaContext>>,
    offsets: rdkafka::TopicPartitionList,
    limit: Duration,
) -> Result<(), BridgeError> {
    use rdkafka::consumer::{CommitMode, Consumer};
    let c = consumer.clone();
    let commit = tokio::task::spawn_blocking(move || c.commit(&offsets, CommitMode::Sync));
    match tokio::time::timeout(limit, commit).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(BridgeError::Kafka(format!("offset commit: {e}"))),
        Ok(Err(e)) => Err(BridgeError::Kafka(format!("offset commit task: {e}"))),
        Err(_) => Err(BridgeError::Kafka(format!(
            "offset commit: no answer from Kafka within {limit:?}"
        ))),
    }
}

/// Asks Kafka for metadata and checks that `topics` exist; sets the
/// readiness flags. Blocking: run it on a blocking thread.
pub fn check_topics(producer: &BridgeProducer, topics: &[String], observability: &Observability) {
    use rdkafka::producer::Producer;
    match producer
        .client()
        .fetch_metadata(None, Duration::from_secs(5))
    {
        Ok(metadata) => {
            observability
                .health
                .kafka_reachable
                .store(true, Ordering::Relaxed);
            let missing: Vec<&String> = topics
                .iter()
                .filter(|t| {
                    !metadata
                        .topics()
                        .iter()
                        .any(|m| m.name() == t.as_str() && m.error().is_none())
                })
                .collect();
            if !missing.is_empty() {
                tracing::warn!(?missing, "Kafka topics named by the routes do not exist");
            }
            observability
                .health
                .topics_exist
                .store(missing.is_empty(), Ordering::Relaxed);
        }
        Err(e) => {
            observability
                .health
                .kafka_reachable
                .store(false, Ordering::Relaxed);
            tracing::warn!(error = %e, "Kafka metadata request failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_commit_gives_up_when_kafka_does_not_answer() {
        // Nothing listens on port 1: no group coordinator will ever answer.
        // The runtime is left without waiting for the commit's blocking
        // thread, which librdkafka keeps for tens of seconds.
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (outcome, took) = runtime.block_on(last_commit_to_nowhere());
        runtime.shutdown_background();
        assert!(
            matches!(&outcome, Err(BridgeError::Kafka(m)) if m.contains("no answer from Kafka within")),
            "{outcome:?}"
        );
        assert!(took < Duration::from_secs(4), "waited {took:?}");
    }

    async fn last_commit_to_nowhere() -> (Result<(), BridgeError>, Duration) {
        let config = crate::config::validate(
            crate::config::parse(
                "mqtt: {url: 'mqtt://127.0.0.1:1883', clientIdPrefix: t}\n\
                 kafka: {bootstrapServers: '127.0.0.1:1'}\n\
                 routes:\n- name: out\n  kafkaToMqtt: {kafkaTopics: [t], mqttTopic: o}\n",
            )
            .unwrap(),
            0,
        )
        .unwrap();
        let (fatal, _fatal_rx) = tokio::sync::mpsc::unbounded_channel();
        let consumer = Arc::new(
            consumer(
                &config,
                context(Vec::new(), None, None, Observability::new(0, 1), fatal),
            )
            .unwrap(),
        );
        let mut offsets = rdkafka::TopicPartitionList::new();
        offsets
            .add_partition_offset("t", 0, rdkafka::Offset::Offset(42))
            .unwrap();
        let started = Instant::now();
        let outcome = commit_within(&consumer, offsets, Duration::from_secs(2)).await;
        (outcome, started.elapsed())
    }

    fn prefetch(window: u32, key: &str) -> i64 {
        consumer_prefetch(window)
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(-1)
    }

    #[test]
    fn the_prefetch_follows_the_in_flight_window() {
        assert_eq!(prefetch(1000, "queued.min.messages"), 1000);
        assert_eq!(prefetch(5000, "queued.min.messages"), 5000);
        // Never below a useful batch.
        assert_eq!(prefetch(1, "queued.min.messages"), 100);
    }

    #[test]
    fn fetches_stay_legal_for_librdkafka() {
        // librdkafka refuses a fetch.max.bytes below message.max.bytes
        // (1,000,000 unless set) and a partition fetch above the whole fetch.
        let fetch = prefetch(1000, "fetch.max.bytes");
        assert!(fetch >= 1_000_000, "{fetch}");
        assert!(prefetch(1000, "max.partition.fetch.bytes") <= fetch);
        // librdkafka's default back-off would idle the consumer for a
        // second each time the small queue is full.
        assert!(prefetch(1000, "fetch.queue.backoff.ms") <= 100);
    }
}
