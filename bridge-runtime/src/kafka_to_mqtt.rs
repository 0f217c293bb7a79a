//! Kafka→MQTT: one consumer group member publishing over
//! `mqtt.publishConnections` MQTT connections (default: 4).
//!
//! Each partition is published over one connection (partition `i` of those
//! seen so far over connection `i % n`), so its records stay in order; the
//! broker's in-flight window (Mosquitto: 20 per connection) is multiplied by
//! the connections. An offset is committed only when the broker acknowledged
//! (QoS 1 PUBACK, QoS 2 PUBCOMP) every publish before it, tracked per
//! partition by an [`AckTracker`]. When a connection drops, what was not
//! acknowledged is uncertain: all connections are rebuilt from scratch and
//! the partitions are rewound to their oldest unacknowledged record
//! (duplicates, never loss).
//!
//! When the broker refuses a publish (MQTT 5 reason code, e.g. 0x87 Not
//! authorized) only that partition stops: it is paused and, after a capped,
//! jittered delay, rewound to its oldest unacknowledged record, nothing of it
//! committed meanwhile; other partitions flow. A record the broker can never
//! take (too large for its Maximum Packet Size, a topic it calls invalid) goes
//! to the route's dead-letter topic, or is dropped and counted.
//!
//! The consumer is polled all the time, also while nothing can be published
//! (MQTT down, window full for a while): its partitions are paused instead,
//! so the group does not evict the bridge after `max.poll.interval.ms`.
//! No blocking librdkafka call runs on the async runtime, except the final
//! synchronous commit after the drain.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::sync::watch;

use crate::ack_tracker::{AckTracker, Seq};
use crate::config::ValidatedConfig;
use crate::delivery::{self, LogEvery, TOO_LARGE, Verdict};
use crate::error::BridgeError;
use crate::kafka_side::{
    self, BridgeKafkaContext, BridgeProducer, DeliveryReport, Owner, PendingRecord, Rebalance,
};
use crate::metrics::{self, Observability, Refusal};
use crate::mqtt_side::{self, Backoff, ConnectionKind, MqttClient, MqttEvent, PollError};
use crate::retry_queue::{RetryQueue, retry_backoff};
use bridge_core::routes::{Disposition, ORIGIN_HEADER, dead_letter_headers};

type PartitionKey = (String, i32);

/// How long nothing may be taken before the partitions are paused (and the
/// consumer polled on): short stalls (a full in-flight window) only wait.
const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// A publish waiting for the broker.
#[derive(Clone, Debug)]
struct PendingPublish {
    partition: usize,
    /// The partition's epoch when published; acks of older epochs only free the window.
    partition_epoch: u64,
    offset: i64,
    /// Index into the route table's Kafka→MQTT routes.
    route: usize,
    seq: Seq,
    qos: u8,
    /// The MQTT topic, named by `/readyz` if the broker refuses it.
    topic: String,
    /// When the record came from Kafka, for `bridge_forward_latency_seconds`.
    received: Instant,
}

/// The broker refused a publish of a partition: it is paused until `due`,
/// then consumed again; the refusal is shown until a publish of it is
/// acknowledged.
struct Refused {
    /// Set while the partition waits.
    due: Option<Instant>,
    backoff: backon::ExponentialBackoff,
    route: usize,
    topic: String,
    verdict: Verdict,
    since: Instant,
}

/// Per-partition state.
struct PartitionState {
    key: PartitionKey,
    tracker: AckTracker<i64>,
    /// Bumped whenever the partition is rewound or revoked.
    epoch: u64,
    /// Highest offset handed to MQTT so far.
    highest: i64,
    /// After a rewind, records above this offset are stale prefetches and skipped.
    skip_above: Option<i64>,
    /// Next offset to commit that the tracker no longer holds.
    to_commit: Option<i64>,
    /// Records skipped while the partitions were paused start here again.
    resume_from: Option<i64>,
    /// The broker refused a publish of this partition.
    refused: Option<Refused>,
    /// Offsets the broker can never take on a route: dead-lettered when seen again.
    undeliverable: Vec<(i64, usize, &'static str)>,
}

/// An event of connection `.1` of publisher generation `.0`.
enum LoopEvent {
    Mqtt(u64, usize, MqttEvent),
    Disconnected(u64),
}

/// Runs the Kafka→MQTT pipeline until shutdown has drained it.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    config: Arc<ValidatedConfig>,
    heartbeat: usize,
    consumer: StreamConsumer<BridgeKafkaContext>,
    mut rebalances: UnboundedReceiver<Rebalance>,
    producer: Arc<BridgeProducer>,
    mut dead_letter_reports: UnboundedReceiver<DeliveryReport>,
    observability: Arc<Observability>,
    mut shutdown: watch::Receiver<bool>,
    fatal: UnboundedSender<BridgeError>,
) {
    // Shared with the last commit's blocking thread (`commit_within`).
    let consumer = Arc::new(consumer);
    let topics = config.routes.consumed_topics();
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    if let Err(e) = consumer.subscribe(&topic_refs) {
        let _ = fatal.send(BridgeError::Kafka(format!(
            "subscribing to {topics:?}: {e}"
        )));
        return;
    }
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let connections = usize::from(config.config.mqtt.kafka_to_mqtt_connections().max(1));
    let mut p = Publisher {
        config: config.clone(),
        observability: observability.clone(),
        events_tx,
        fatal: fatal.clone(),
        generation: 0,
        connections,
        clients: Vec::new(),
        loop_tasks: Vec::new(),
        connected: Vec::new(),
        max_packet: vec![None; connections],
        backoff: Backoff::default(),
        reconnect_at: Some(tokio::time::Instant::now()),
    };
    let mut state = State::new(&config, &observability, connections, producer);
    let max_in_flight = config.config.max_in_flight_publishes as usize;
    let origin: Arc<str> = Arc::from(config.origin());
    let grace = Duration::from_secs(u64::from(config.config.shutdown_grace_period_seconds));
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut blocked_since: Option<Instant> = None;
    loop {
        let can_take = drain_deadline.is_none()
            && p.all_connected()
            && state.in_flight + state.dead_letters_in_flight < max_in_flight
            && state.dead_letters_parked.is_empty();
        if can_take {
            blocked_since = None;
            if state.flow_paused {
                state.resume_flow(&consumer);
            }
        } else {
            blocked_since.get_or_insert_with(Instant::now);
        }
        tokio::select! {
            biased;
            Some(rebalance) = rebalances.recv() => state.on_rebalance(rebalance, &consumer),
            Some(event) = events.recv() => match event {
                LoopEvent::Mqtt(generation, conn, event) if generation == p.generation => match event {
                    MqttEvent::Connected { max_packet_size, .. } => {
                        if let Some(c) = p.connected.get_mut(conn) {
                            *c = true;
                        }
                        if let Some(m) = p.max_packet.get_mut(conn) {
                            *m = max_packet_size;
                        }
                        if p.all_connected() {
                            p.backoff.reset();
                            observability.health.mqtt_publisher_connected.store(true, Ordering::Relaxed);
                        }
                    }
                    MqttEvent::PublishSent(pkid) => state.on_sent(conn, pkid),
                    MqttEvent::PublishAcked(pkid) => state.on_acked(conn, pkid),
                    MqttEvent::PublishRefused(pkid, verdict) => state.on_refused(conn, pkid, verdict, &consumer),
                    _ => {}
                },
                LoopEvent::Disconnected(generation) if generation == p.generation => {
                    p.connected.iter_mut().for_each(|c| *c = false);
                    observability.health.mqtt_publisher_connected.store(false, Ordering::Relaxed);
                    state.rewind_all(&consumer);
                    p.drop_client();
                    let delay = p.backoff.next_delay();
                    p.reconnect_at = Some(tokio::time::Instant::now() + delay);
                }
                _ => {}
            },
            Some(report) = dead_letter_reports.recv() => state.on_dead_letter_report(report),
            message = consumer.recv(), if can_take || state.flow_paused => match message {
                Ok(m) => {
                    if !can_take {
                        // Fetched before the pause took effect: taken again on resume.
                        state.skip_until_resume(m.topic(), m.partition(), m.offset());
                        continue;
                    }
                    let key = m.key().map(Bytes::copy_from_slice);
                    // A tombstone (null value) is published with an empty payload;
                    // with `retain: true` that clears the topic's retained message.
                    let payload = Bytes::copy_from_slice(m.payload().unwrap_or_default());
                    let own = m.headers().is_some_and(|h| {
                        h.iter().any(|h| h.key == ORIGIN_HEADER && h.value == Some(origin.as_bytes()))
                    });
                    state.on_record(
                        RecordIn { topic: m.topic(), partition: m.partition(), offset: m.offset(), key, payload, own },
                        &p, &origin,
                    ).await;
                }
                Err(e) => tracing::warn!(error = %e, "Kafka consumer error"),
            },
            _ = tick.tick() => {
                observability.health.beat(heartbeat);
                if !can_take
                    && !state.flow_paused
                    && blocked_since.is_some_and(|t| t.elapsed() >= PAUSE_AFTER)
                {
                    state.pause_flow(&consumer);
                }
                state.retry_refused(&consumer);
                state.resend_dead_letters();
                state.commit(&consumer);
                state.show_refusals();
                observability.metrics.in_flight
                    .get_or_create(&vec![("direction", metrics::KAFKA_TO_MQTT.to_owned())])
                    .set(state.in_flight as i64);
                if p.clients.is_empty() && p.reconnect_at.is_some_and(|t| t <= tokio::time::Instant::now()) {
                    p.start();
                }
            }
            _ = shutdown.changed(), if drain_deadline.is_none() => {
                drain_deadline = Some(tokio::time::Instant::now() + grace);
            }
        }
        if let Some(deadline) = drain_deadline
            && (state.in_flight + state.dead_letters_in_flight == 0
                || tokio::time::Instant::now() >= deadline)
        {
            break;
        }
    }
    // The last commit waits for the broker: what was acknowledged during the
    // drain is not consumed again after the restart.
    let final_offsets = state.offsets_to_commit();
    if final_offsets.count() > 0
        && let Err(e) =
            kafka_side::commit_within(&consumer, final_offsets, kafka_side::FINAL_COMMIT_TIMEOUT)
                .await
    {
        tracing::warn!(error = %e, "final offset commit failed; the records since the last commit come again");
    }
    for c in &p.clients {
        c.disconnect().await;
    }
    for t in p.loop_tasks.drain(..) {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
}

/// The MQTT publisher connections, all rebuilt after the loss of any.
struct Publisher {
    config: Arc<ValidatedConfig>,
    observability: Arc<Observability>,
    events_tx: UnboundedSender<LoopEvent>,
    fatal: UnboundedSender<BridgeError>,
    generation: u64,
    connections: usize,
    /// Empty while waiting to reconnect.
    clients: Vec<MqttClient>,
    loop_tasks: Vec<tokio::task::JoinHandle<()>>,
    connected: Vec<bool>,
    /// Per connection, the broker's announced Maximum Packet Size.
    max_packet: Vec<Option<u32>>,
    backoff: Backoff,
    reconnect_at: Option<tokio::time::Instant>,
}

impl Publisher {
    fn all_connected(&self) -> bool {
        !self.connected.is_empty() && self.connected.iter().all(|c| *c)
    }

    /// The connection publishing the records of partition state `pi`.
    fn client_for(&self, pi: usize) -> Option<(usize, &MqttClient)> {
        let conn = pi % self.connections;
        self.clients.get(conn).map(|c| (conn, c))
    }

    /// Largest publish connection `conn` may send: the configured limit and
    /// the broker's announced one, whichever is smaller.
    fn max_packet_bytes(&self, conn: usize) -> usize {
        let configured = self
            .config
            .config
            .mqtt
            .max_packet_bytes
            .map_or(mqtt_side::MQTT_MAX_PACKET_BYTES, |b| b as usize);
        match self.max_packet.get(conn).copied().flatten() {
            Some(announced) => configured.min(announced as usize),
            None => configured,
        }
    }

    fn start(&mut self) {
        self.generation += 1;
        self.reconnect_at = None;
        self.connected = vec![false; self.connections];
        self.max_packet = vec![None; self.connections];
        for conn in 0..self.connections {
            if !self.start_connection(conn) {
                return;
            }
        }
    }

    /// Client id of publishing connection `conn`.
    fn client_id(&self, conn: usize) -> String {
        self.config.client_id(format!("out-{conn}"))
    }

    /// Starts connection `conn`; false when it cannot be built (reported as fatal).
    fn start_connection(&mut self, conn: usize) -> bool {
        let client_id = self.client_id(conn);
        let built = mqtt_side::connect(
            &self.config,
            ConnectionKind {
                client_id: client_id.clone(),
                persistent: false,
                manual_acks: false,
                capacity: self.config.config.max_in_flight_publishes as usize + 100,
                outgoing_inflight: if self.config.routes.kafka_to_mqtt.iter().any(|r| r.qos == 2) {
                    mqtt_side::QOS2_OUTGOING_INFLIGHT_V311
                } else {
                    mqtt_side::DEFAULT_OUTGOING_INFLIGHT
                },
            },
        );
        let (client, mut eventloop) = match built {
            Ok(c) => c,
            Err(e) => {
                let _ = self.fatal.send(e);
                return false;
            }
        };
        let generation = self.generation;
        let events = self.events_tx.clone();
        let fatal = self.fatal.clone();
        let observability = self.observability.clone();
        let labels = metrics::connection("mqtt", &client_id);
        self.loop_tasks.push(tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(MqttEvent::Other) => {}
                    Ok(event) => {
                        if matches!(event, MqttEvent::Connected { .. }) {
                            observability
                                .metrics
                                .connection_up
                                .get_or_create(&labels)
                                .set(1);
                        }
                        if events
                            .send(LoopEvent::Mqtt(generation, conn, event))
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(PollError::Refused(why)) => {
                        let _ = fatal.send(BridgeError::MqttRefused(format!("{client_id}: {why}")));
                        return;
                    }
                    // The pipeline dropped this generation's clients; `drop_client`
                    // marked the connections down.
                    Err(PollError::Closed) => return,
                    Err(PollError::Connection(why)) => {
                        tracing::warn!(client_id, error = %why, "MQTT publisher connection lost");
                        observability
                            .metrics
                            .connection_up
                            .get_or_create(&labels)
                            .set(0);
                        observability
                            .metrics
                            .reconnects
                            .get_or_create(&labels)
                            .inc();
                        let _ = events.send(LoopEvent::Disconnected(generation));
                        return;
                    }
                }
            }
        }));
        self.clients.push(client);
        true
    }

    /// Ends every connection of this generation. Their loops are aborted
    /// and cannot say so themselves: `bridge_connection_up` turns 0 here.
    fn drop_client(&mut self) {
        self.clients.clear();
        for t in self.loop_tasks.drain(..) {
            t.abort();
        }
        for conn in 0..self.connections {
            let client_id = self.client_id(conn);
            self.observability
                .metrics
                .connection_up
                .get_or_create(&metrics::connection("mqtt", &client_id))
                .set(0);
        }
    }
}

/// A consumed record, as the pipeline needs it.
struct RecordIn<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    key: Option<Bytes>,
    payload: Bytes,
    own: bool,
}

struct State {
    config: Arc<ValidatedConfig>,
    observability: Arc<Observability>,
    producer: Arc<BridgeProducer>,
    partitions: Vec<PartitionState>,
    /// Topic → partition → index into `partitions` (looked up by `&str`:
    /// no allocation per record).
    index: HashMap<String, HashMap<i32, usize>>,
    /// Per connection, publishes handed to rumqttc, in order, waiting for their packet id.
    sent_order: Vec<VecDeque<PendingPublish>>,
    /// Per connection and packet id, oldest first: rumqttc hands a QoS 2
    /// packet id out again once PUBREC arrived, before its PUBCOMP, so one id
    /// can name two publishes at once. The broker completes them in order.
    by_pkid: HashMap<(usize, u16), VecDeque<PendingPublish>>,
    /// Publishes waiting for the broker's acknowledgement.
    in_flight: usize,
    /// Dead-letter records not yet confirmed by Kafka (sent, parked or held).
    dead_letters_in_flight: usize,
    /// Arrival number of the next dead-letter record.
    next_dead_letter: u64,
    /// The partitions are paused because nothing can be published.
    flow_paused: bool,
    /// Dead-letter records waiting for room in the producer queue.
    dead_letters_parked: VecDeque<Box<PendingRecord>>,
    /// Dead-letter records Kafka refused or failed to take, per topic.
    dead_letter_retries: RetryQueue<Box<PendingRecord>>,
    /// Whether `/readyz` currently lists refusals of this pipeline.
    refusals_shown: bool,
    max_record_bytes: usize,
    /// Per route (index into the route table's Kafka→MQTT routes).
    counters: Vec<metrics::RouteCounters>,
    /// Receipt from Kafka to the broker's acknowledgement of the publish.
    forward_latency: prometheus_client::metrics::histogram::Histogram,
    dropped_log: LogEvery,
    refused_log: LogEvery,
}

/// Name of this pipeline in `/readyz`.
const OWNER: &str = "kafka-to-mqtt";

impl State {
    fn new(
        config: &Arc<ValidatedConfig>,
        observability: &Arc<Observability>,
        connections: usize,
        producer: Arc<BridgeProducer>,
    ) -> Self {
        Self {
            config: config.clone(),
            observability: observability.clone(),
            producer,
            partitions: Vec::new(),
            index: HashMap::new(),
            sent_order: vec![VecDeque::new(); connections],
            by_pkid: HashMap::new(),
            in_flight: 0,
            dead_letters_in_flight: 0,
            next_dead_letter: 0,
            flow_paused: false,
            dead_letters_parked: VecDeque::new(),
            dead_letter_retries: RetryQueue::default(),
            refusals_shown: false,
            max_record_bytes: config.config.kafka.producer.max_message_bytes as usize,
            counters: config
                .routes
                .kafka_to_mqtt
                .iter()
                .map(|r| {
                    observability
                        .metrics
                        .route_counters(&r.name, metrics::KAFKA_TO_MQTT)
                })
                .collect(),
            forward_latency: observability
                .metrics
                .forward_latency_of(metrics::KAFKA_TO_MQTT),
            dropped_log: LogEvery::new(Duration::from_secs(10)),
            refused_log: LogEvery::new(Duration::from_secs(10)),
        }
    }

    fn partition(&mut self, topic: &str, partition: i32) -> usize {
        if let Some(&i) = self.index.get(topic).and_then(|p| p.get(&partition)) {
            return i;
        }
        let key = (topic.to_owned(), partition);
        let i = self.partitions.len();
        self.partitions.push(PartitionState {
            key: key.clone(),
            tracker: AckTracker::new(),
            epoch: 0,
            highest: -1,
            skip_above: None,
            to_commit: None,
            resume_from: None,
            refused: None,
            undeliverable: Vec::new(),
        });
        self.index
            .entry(topic.to_owned())
            .or_default()
            .insert(partition, i);
        i
    }

    async fn on_record(&mut self, r: RecordIn<'_>, publisher: &Publisher, origin: &Arc<str>) {
        let received = Instant::now();
        let pi = self.partition(r.topic, r.partition);
        let part = &mut self.partitions[pi];
        if let Some(limit) = part.skip_above {
            if r.offset > limit {
                return;
            }
            part.skip_above = None;
        }
        part.highest = part.highest.max(r.offset);
        let config = self.config.clone();
        let plans = config
            .routes
            .plan_kafka(r.topic, r.key.as_deref(), &r.payload, r.own);
        let pending = plans
            .iter()
            .filter(|(_, d)| !matches!(d, Disposition::Drop { .. }))
            .count() as u32;
        let seq = part.tracker.push(r.offset, pending);
        let partition_epoch = part.epoch;
        for (route, disposition) in plans {
            if let Some(c) = self.counters.get(route) {
                c.received.inc();
            }
            match disposition {
                Disposition::Forward(plan) => {
                    let Some((conn, client)) = publisher.client_for(pi) else {
                        // Cannot happen while taking records; rewinding redelivers it.
                        continue;
                    };
                    let bad = &mut self.partitions[pi].undeliverable;
                    let known_bad = bad
                        .iter()
                        .position(|(o, rt, _)| *o == r.offset && *rt == route)
                        .map(|i| bad.swap_remove(i).2);
                    if let Some(reason) = known_bad {
                        let why = format!("the MQTT broker refused the publish to {}", plan.topic);
                        self.undeliverable(pi, seq, route, reason, &why, &r);
                        continue;
                    }
                    let size = delivery::mqtt_publish_size(
                        client.is_v5(),
                        &plan.topic,
                        plan.qos,
                        r.payload.len(),
                        &[(ORIGIN_HEADER, origin)],
                    );
                    let limit = publisher.max_packet_bytes(conn);
                    if size > limit {
                        let why = format!(
                            "publish of {size} bytes is larger than the MQTT limit of {limit} bytes \
                             (mqtt.maxPacketBytes or the broker's Maximum Packet Size)"
                        );
                        self.undeliverable(pi, seq, route, TOO_LARGE, &why, &r);
                        continue;
                    }
                    let Some(sent_order) = self.sent_order.get_mut(conn) else {
                        continue;
                    };
                    sent_order.push_back(PendingPublish {
                        partition: pi,
                        partition_epoch,
                        offset: r.offset,
                        route,
                        seq,
                        qos: plan.qos,
                        topic: plan.topic.clone(),
                        received,
                    });
                    self.in_flight += 1;
                    // The topic moves into rumqttc: the copy kept above for
                    // `/readyz` replaces the one rumqttc would make.
                    if let Err(e) = client
                        .publish(plan.topic, plan.qos, plan.retain, r.payload.clone(), origin)
                        .await
                    {
                        tracing::warn!(error = %e, "MQTT publish request failed");
                    }
                }
                Disposition::DeadLetter { record, reason } => {
                    let name = &config.routes.kafka_to_mqtt[route].name;
                    self.observability
                        .metrics
                        .dead_lettered
                        .get_or_create(&metrics::route_reason(name, reason))
                        .inc();
                    self.send_dead_letter(pi, seq, route, record.topic, record.headers, &r);
                }
                Disposition::Drop { reason } => self.count_drop(route, reason, r.topic),
            }
        }
    }

    /// A record the broker can never take on `route`: to the route's
    /// dead-letter topic, or dropped and counted.
    fn undeliverable(
        &mut self,
        pi: usize,
        seq: Seq,
        route: usize,
        reason: &'static str,
        why: &str,
        r: &RecordIn<'_>,
    ) {
        let config = self.config.clone();
        let route_cfg = &config.routes.kafka_to_mqtt[route];
        match &route_cfg.dead_letter_topic {
            Some(topic) => {
                self.observability
                    .metrics
                    .dead_lettered
                    .get_or_create(&metrics::route_reason(&route_cfg.name, reason))
                    .inc();
                let headers = dead_letter_headers(&route_cfg.name, reason, why, r.topic);
                self.send_dead_letter(pi, seq, route, topic.as_str().into(), headers, r);
            }
            None => {
                self.count_drop(route, reason, r.topic);
                if let Some(p) = self.partitions.get_mut(pi) {
                    p.tracker.complete(seq);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn send_dead_letter(
        &mut self,
        pi: usize,
        seq: Seq,
        route: usize,
        topic: Arc<str>,
        headers: Vec<(String, Vec<u8>)>,
        r: &RecordIn<'_>,
    ) {
        let key_len = r.key.as_ref().map_or(0, Bytes::len);
        let payload = delivery::dead_letter_payload(
            &r.payload,
            self.max_record_bytes,
            key_len,
            &headers,
            self.config.origin(),
        );
        let now = Instant::now();
        let record = Box::new(PendingRecord {
            owner: Owner::KafkaToMqtt,
            // The partition's epoch: reports of an older one complete nothing.
            epoch: self.partitions[pi].epoch,
            order: self.next_dead_letter,
            partition: Some(pi),
            seq: Some(seq),
            route,
            dead_letter: true,
            received: now,
            sent: now,
            topic,
            key: r.key.clone(),
            payload,
            headers,
        });
        self.next_dead_letter += 1;
        self.dead_letters_in_flight += 1;
        self.submit_dead_letter(record);
    }

    fn submit_dead_letter(&mut self, record: Box<PendingRecord>) {
        if self.dead_letter_retries.is_holding(&record.topic) {
            let (topic, order) = (record.topic.clone(), record.order);
            self.dead_letter_retries.push_behind(&topic, order, record);
        } else if !self.dead_letters_parked.is_empty() {
            self.dead_letters_parked.push_back(record);
        } else {
            match kafka_side::send(&self.producer, record, self.config.origin()) {
                Ok(()) => {}
                Err((e, back))
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                {
                    self.dead_letters_parked.push_back(back);
                }
                Err((e, back)) => self.dead_letter_failed(back, &e),
            }
        }
    }

    /// Sends the parked and the due held dead-letter records.
    fn resend_dead_letters(&mut self) {
        let parked = std::mem::take(&mut self.dead_letters_parked);
        for record in parked {
            self.submit_dead_letter(record);
        }
        if self.dead_letter_retries.is_empty() {
            return;
        }
        for (_, records) in self.dead_letter_retries.take_due(Instant::now()) {
            for record in records {
                self.submit_dead_letter(record);
            }
        }
    }

    fn on_dead_letter_report(&mut self, report: DeliveryReport) {
        let record = report.record;
        let pi = record.partition.unwrap_or(usize::MAX);
        let current = self
            .partitions
            .get(pi)
            .is_some_and(|p| p.epoch == record.epoch);
        match report.result {
            Ok(()) => {
                self.dead_letter_retries.succeeded(&record.topic);
                if let (true, Some(seq)) = (current, record.seq) {
                    self.partitions[pi].tracker.complete(seq);
                }
                self.dead_letters_in_flight = self.dead_letters_in_flight.saturating_sub(1);
            }
            // Its partition was rewound: the record is consumed (and dead-lettered) again.
            Err(_) if !current => {
                self.dead_letters_in_flight = self.dead_letters_in_flight.saturating_sub(1);
            }
            Err(e) => self.dead_letter_failed(record, &e),
        }
    }

    /// A dead-letter record Kafka did not take: held and retried, unless it
    /// can never be taken (then dropped and counted). Never forgotten: its
    /// partition commits nothing past it meanwhile.
    fn dead_letter_failed(
        &mut self,
        record: Box<PendingRecord>,
        error: &rdkafka::error::KafkaError,
    ) {
        let verdict = delivery::classify_kafka(error);
        let name = self.config.routes.kafka_to_mqtt[record.route].name.clone();
        if let Verdict::Undeliverable(_) = verdict {
            self.count_drop(record.route, "dead_letter_undeliverable", &record.topic);
            let pi = record.partition.unwrap_or(usize::MAX);
            if let (Some(p), Some(seq)) = (self.partitions.get_mut(pi), record.seq)
                && p.epoch == record.epoch
            {
                p.tracker.complete(seq);
            }
            self.dead_letters_in_flight = self.dead_letters_in_flight.saturating_sub(1);
            return;
        }
        self.observability
            .metrics
            .failed
            .get_or_create(&metrics::route_reason(&name, verdict.label()))
            .inc();
        tracing::warn!(route = name, topic = &*record.topic, %error, "dead-letter record not taken; holding it for a retry");
        let (topic, order) = (record.topic.clone(), record.order);
        self.dead_letter_retries
            .hold(&topic, &name, order, record, verdict, Instant::now());
    }

    fn count_drop(&mut self, route: usize, reason: &'static str, source_topic: &str) {
        let name = &self.config.routes.kafka_to_mqtt[route].name;
        self.observability
            .count_drop(&mut self.dropped_log, name, reason, source_topic);
    }

    fn on_sent(&mut self, conn: usize, pkid: u16) {
        let Some(publish) = self.sent_order.get_mut(conn).and_then(VecDeque::pop_front) else {
            return;
        };
        if publish.qos == 0 {
            self.complete(&publish);
        } else {
            self.by_pkid
                .entry((conn, pkid))
                .or_default()
                .push_back(publish);
        }
    }

    fn take_publish(&mut self, conn: usize, pkid: u16) -> Option<PendingPublish> {
        // The emptied queue stays for the packet id's next use (ids cycle
        // through the in-flight window): no allocation per publish.
        self.by_pkid.get_mut(&(conn, pkid))?.pop_front()
    }

    fn on_acked(&mut self, conn: usize, pkid: u16) {
        if let Some(publish) = self.take_publish(conn, pkid) {
            self.complete(&publish);
        }
    }

    fn complete(&mut self, publish: &PendingPublish) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let Some(p) = self.partitions.get_mut(publish.partition) else {
            return;
        };
        if p.epoch != publish.partition_epoch {
            return;
        }
        p.tracker.complete(publish.seq);
        p.refused = None;
        if let Some(c) = self.counters.get(publish.route) {
            c.forwarded.inc();
        }
        self.forward_latency
            .observe(publish.received.elapsed().as_secs_f64());
    }

    /// The broker refused a publish (MQTT 5 reason code).
    fn on_refused(
        &mut self,
        conn: usize,
        pkid: u16,
        verdict: Verdict,
        consumer: &StreamConsumer<BridgeKafkaContext>,
    ) {
        let Some(publish) = self.take_publish(conn, pkid) else {
            return;
        };
        self.in_flight = self.in_flight.saturating_sub(1);
        let pi = publish.partition;
        if self
            .partitions
            .get(pi)
            .is_none_or(|p| p.epoch != publish.partition_epoch)
        {
            return;
        }
        let name = self.config.routes.kafka_to_mqtt[publish.route].name.clone();
        self.observability
            .metrics
            .failed
            .get_or_create(&metrics::route_reason(&name, verdict.label()))
            .inc();
        if let Some(more) = self.refused_log.allow(Instant::now()) {
            tracing::warn!(
                route = name,
                mqtt_topic = publish.topic,
                reason = verdict.label(),
                not_logged_since_last = more,
                "the MQTT broker refused a publish; its partition waits (nothing committed) and retries"
            );
        }
        let part = &mut self.partitions[pi];
        if let Verdict::Undeliverable(reason) = verdict {
            // Published again right away, this time to the dead-letter topic.
            part.undeliverable
                .push((publish.offset, publish.route, reason));
            self.rewind(pi, consumer, None);
            return;
        }
        let (mut backoff, since) = part.refused.take().map_or_else(
            || (retry_backoff(), Instant::now()),
            |r| (r.backoff, r.since),
        );
        let delay = backoff.next().unwrap_or(crate::retry_queue::MAX_RETRY);
        let refused = Refused {
            due: Some(Instant::now() + delay),
            backoff,
            route: publish.route,
            topic: publish.topic,
            verdict,
            since,
        };
        self.rewind(pi, consumer, Some(refused));
    }

    /// Stops partition `pi` where it is: everything not yet acknowledged is
    /// forgotten and consumed again from the oldest unacknowledged record —
    /// at once, or (refused) after the refusal's delay, paused meanwhile.
    fn rewind(
        &mut self,
        pi: usize,
        consumer: &StreamConsumer<BridgeKafkaContext>,
        refused: Option<Refused>,
    ) {
        let Some(part) = self.partitions.get_mut(pi) else {
            return;
        };
        // What was acknowledged before the refused record is done.
        if let Some(last) = part.tracker.release().last() {
            part.to_commit = Some(last + 1);
        }
        let front = part.tracker.front().copied();
        part.tracker.clear();
        part.epoch += 1;
        let waits = refused.as_ref().is_some_and(|r| r.due.is_some());
        part.refused = refused;
        let Some(front) = front else {
            return;
        };
        let tpl = single(&part.key, Offset::Offset(front));
        if waits && let Err(e) = consumer.pause(&tpl) {
            tracing::warn!(error = %e, "pausing a partition failed");
        }
        part.skip_above = Some(part.highest);
        part.resume_from = None;
        // Asynchronous: librdkafka seeks in the background (timeout 0).
        if let Err(e) = consumer.seek_partitions(tpl, Duration::ZERO) {
            tracing::warn!(error = %e, topic = part.key.0, partition = part.key.1, "seek failed");
        }
    }

    /// Resumes the refused partitions whose delay is over.
    fn retry_refused(&mut self, consumer: &StreamConsumer<BridgeKafkaContext>) {
        let now = Instant::now();
        for part in &mut self.partitions {
            let Some(refused) = part.refused.as_mut() else {
                continue;
            };
            if refused.due.is_some_and(|due| due <= now) {
                refused.due = None;
                if !self.flow_paused
                    && let Err(e) = consumer.resume(&single(&part.key, Offset::Invalid))
                {
                    tracing::warn!(error = %e, "resuming a partition failed");
                }
            }
        }
    }

    /// Nothing could be published for a while: pause every assigned
    /// partition, and keep polling so the group keeps us.
    fn pause_flow(&mut self, consumer: &StreamConsumer<BridgeKafkaContext>) {
        if let Ok(assigned) = consumer.assignment()
            && let Err(e) = consumer.pause(&assigned)
        {
            tracing::warn!(error = %e, "pausing the partitions failed");
        }
        self.flow_paused = true;
    }

    fn skip_until_resume(&mut self, topic: &str, partition: i32, offset: i64) {
        let pi = self.partition(topic, partition);
        let part = &mut self.partitions[pi];
        if part.skip_above.is_some_and(|limit| offset > limit) {
            return;
        }
        part.resume_from = Some(part.resume_from.map_or(offset, |o| o.min(offset)));
    }

    /// Publishing can go on: resume the partitions (not those waiting after
    /// a refusal), from the first record skipped while paused.
    fn resume_flow(&mut self, consumer: &StreamConsumer<BridgeKafkaContext>) {
        self.flow_paused = false;
        let Ok(assigned) = consumer.assignment() else {
            return;
        };
        let mut resume = TopicPartitionList::new();
        for e in assigned.elements() {
            let pi = self.partition(e.topic(), e.partition());
            let part = &mut self.partitions[pi];
            if part.refused.as_ref().is_some_and(|r| r.due.is_some()) {
                continue;
            }
            if let Some(offset) = part.resume_from.take() {
                let tpl = single(&part.key, Offset::Offset(offset));
                if let Err(err) = consumer.seek_partitions(tpl, Duration::ZERO) {
                    tracing::warn!(error = %err, "seek failed");
                }
            }
            let _ = resume.add_partition(e.topic(), e.partition());
        }
        if let Err(e) = consumer.resume(&resume) {
            tracing::warn!(error = %e, "resuming the partitions failed");
        }
    }

    fn on_rebalance(
        &mut self,
        rebalance: Rebalance,
        consumer: &StreamConsumer<BridgeKafkaContext>,
    ) {
        match rebalance {
            Rebalance::Revoked(list) => {
                tracing::info!(partitions = ?list, "partitions revoked");
                for (topic, partition) in list {
                    let Some(&pi) = self.index.get(&topic).and_then(|p| p.get(&partition)) else {
                        continue;
                    };
                    let part = &mut self.partitions[pi];
                    part.tracker.clear();
                    part.epoch += 1;
                    part.highest = -1;
                    part.skip_above = None;
                    part.to_commit = None;
                    part.resume_from = None;
                    part.refused = None;
                    part.undeliverable.clear();
                }
            }
            Rebalance::Assigned(list) => {
                tracing::info!(partitions = ?list, "partitions assigned");
                if self.flow_paused {
                    let mut tpl = TopicPartitionList::new();
                    for (t, p) in &list {
                        let _ = tpl.add_partition(t, *p);
                    }
                    if let Err(e) = consumer.pause(&tpl) {
                        tracing::warn!(error = %e, "pausing the assigned partitions failed");
                    }
                }
            }
        }
    }

    /// Forgets everything in flight and rewinds each partition to its
    /// oldest unacknowledged record (MQTT connection lost).
    fn rewind_all(&mut self, consumer: &StreamConsumer<BridgeKafkaContext>) {
        for pi in 0..self.partitions.len() {
            let refused = self.partitions[pi].refused.take();
            if self.partitions[pi].tracker.front().is_some() {
                let p = &self.partitions[pi];
                tracing::info!(
                    topic = p.key.0,
                    partition = p.key.1,
                    "rewinding after MQTT connection loss"
                );
            }
            self.rewind(pi, consumer, refused);
        }
        self.sent_order.iter_mut().for_each(VecDeque::clear);
        self.by_pkid.clear();
        self.in_flight = 0;
    }

    /// Per partition, the offset after the last record whose publishes were
    /// all acknowledged.
    fn offsets_to_commit(&mut self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for p in &mut self.partitions {
            if let Some(last) = p.tracker.release().last() {
                p.to_commit = Some(last + 1);
            }
            if let Some(next) = p.to_commit.take() {
                let _ = tpl.add_partition_offset(&p.key.0, p.key.1, Offset::Offset(next));
            }
        }
        tpl
    }

    fn commit(&mut self, consumer: &StreamConsumer<BridgeKafkaContext>) {
        let tpl = self.offsets_to_commit();
        if tpl.count() > 0
            && let Err(e) = consumer.commit(&tpl, CommitMode::Async)
        {
            tracing::warn!(error = %e, "offset commit failed");
        }
    }

    /// Tells `/readyz` which MQTT topics and dead-letter topics refuse records.
    fn show_refusals(&mut self) {
        let mut refusals: Vec<Refusal> = self
            .partitions
            .iter()
            .filter_map(|p| p.refused.as_ref())
            .filter(|r| matches!(r.verdict, Verdict::Refused(_)))
            .map(|r| Refusal {
                route: self.config.routes.kafka_to_mqtt[r.route].name.clone(),
                target: format!("MQTT topic {}", r.topic),
                reason: r.verdict.label(),
                since: r.since,
                held: 1,
            })
            .collect();
        refusals.extend(
            self.dead_letter_retries
                .holdings()
                .into_iter()
                .filter(|h| matches!(h.verdict, Verdict::Refused(_)))
                .map(|h| Refusal {
                    route: h.context,
                    target: format!("dead-letter topic {}", h.target),
                    reason: h.verdict.label(),
                    since: h.since,
                    held: h.held,
                }),
        );
        if refusals.is_empty() && !self.refusals_shown {
            return;
        }
        self.refusals_shown = !refusals.is_empty();
        self.observability.health.set_refusals(OWNER, refusals);
    }
}

/// A one-partition list.
fn single(key: &PartitionKey, offset: Offset) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    let _ = tpl.add_partition_offset(&key.0, key.1, offset);
    tpl
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_config() -> Arc<ValidatedConfig> {
        Arc::new(
            crate::config::validate(
                crate::config::parse(
                    "mqtt: {url: 'mqtt://127.0.0.1:1883', clientIdPrefix: t}\n\
                     kafka: {bootstrapServers: '127.0.0.1:9092'}\n\
                     routes:\n- name: out\n  kafkaToMqtt: {kafkaTopics: [t], mqttTopic: o}\n",
                )
                .unwrap(),
                0,
            )
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn dropping_the_connections_marks_every_one_down() {
        // One lost connection ends them all; the others' loops are aborted
        // and cannot report it, so the metric must not keep saying 1.
        let config = test_config();
        let observability = Observability::new(0, 1);
        let (events_tx, _events) = mpsc::unbounded_channel();
        let (fatal, _) = mpsc::unbounded_channel();
        let mut p = Publisher {
            config: config.clone(),
            observability: observability.clone(),
            events_tx,
            fatal,
            generation: 1,
            connections: 2,
            clients: Vec::new(),
            loop_tasks: Vec::new(),
            connected: vec![true; 2],
            max_packet: vec![None; 2],
            backoff: Backoff::default(),
            reconnect_at: None,
        };
        let labels: Vec<_> = (0..2)
            .map(|c| metrics::connection("mqtt", &p.client_id(c)))
            .collect();
        for l in &labels {
            observability.metrics.connection_up.get_or_create(l).set(1);
        }
        p.drop_client();
        for l in &labels {
            assert_eq!(
                observability.metrics.connection_up.get_or_create(l).get(),
                0,
                "{l:?}"
            );
        }
    }

    fn state_with(records: usize) -> State {
        let config = test_config();
        let observability = Observability::new(0, 1);
        let (fatal, _) = mpsc::unbounded_channel();
        let producer = Arc::new(
            kafka_side::producer(
                &config,
                kafka_side::context(Vec::new(), None, None, observability.clone(), fatal),
            )
            .unwrap(),
        );
        let mut state = State::new(&config, &observability, 2, producer);
        let pi = state.partition("t", 0);
        for offset in 0..records {
            let seq = state.partitions[pi].tracker.push(offset as i64, 1);
            state.sent_order[0].push_back(PendingPublish {
                partition: pi,
                partition_epoch: 0,
                offset: offset as i64,
                route: 0,
                seq,
                qos: 2,
                topic: "o".into(),
                received: Instant::now(),
            });
            state.in_flight += 1;
        }
        state
    }

    #[test]
    fn a_packet_id_reused_before_pubcomp_completes_each_publish_once() {
        let mut state = state_with(2);
        // Offset 0 goes out as packet 7; after its PUBREC rumqttc reuses 7 for offset 1.
        state.on_sent(0, 7);
        state.on_sent(0, 7);
        // PUBCOMP of offset 0: only offset 0 is done; the same packet id on
        // another connection is another publish.
        state.on_acked(1, 7);
        assert_eq!(state.in_flight, 2);
        state.on_acked(0, 7);
        assert_eq!(state.partitions[0].tracker.release(), vec![0]);
        assert_eq!(state.in_flight, 1);
        state.on_acked(0, 7);
        assert_eq!(state.partitions[0].tracker.release(), vec![1]);
        assert_eq!(state.in_flight, 0);
        assert!(state.by_pkid.values().all(VecDeque::is_empty));
        assert_eq!(state.counters[0].forwarded.get(), 2);
        // A stray acknowledgement changes nothing.
        state.on_acked(0, 7);
        assert_eq!(state.in_flight, 0);
    }

    #[test]
    fn acknowledgements_of_a_rewound_partition_commit_nothing() {
        let mut state = state_with(3);
        state.on_sent(0, 1);
        state.on_sent(0, 2);
        state.on_sent(0, 3);
        state.on_acked(0, 1);
        // The partition is rewound (e.g. the broker refused offset 1).
        let part = &mut state.partitions[0];
        if let Some(last) = part.tracker.release().last() {
            part.to_commit = Some(last + 1);
        }
        part.tracker.clear();
        part.epoch += 1;
        // Late acknowledgements of the old epoch free the window only.
        state.on_acked(0, 3);
        assert_eq!(state.in_flight, 1);
        assert!(state.partitions[0].tracker.release().is_empty());
        let offsets = state.offsets_to_commit();
        let committed: Vec<_> = offsets
            .elements()
            .iter()
            .map(|e| (e.partition(), e.offset()))
            .collect();
        assert_eq!(
            committed,
            vec![(0, Offset::Offset(1))],
            "only offset 0 is done"
        );
    }
}
