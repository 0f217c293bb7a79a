//! Kafka→MQTT: one consumer group member publishing over `mqtt.connections`
//! MQTT connections.
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
use crate::error::BridgeError;
use crate::kafka_side::{
    self, BridgeKafkaContext, BridgeProducer, DeliveryReport, Owner, PendingRecord,
};
use crate::metrics::{self, Observability};
use crate::mqtt_side::{self, Backoff, ConnectionKind, MqttClient, MqttEvent, PollError};
use crate::routes::{Disposition, ORIGIN_HEADER};

type PartitionKey = (String, i32);

/// A publish waiting for the broker.
#[derive(Clone, Debug)]
struct Token {
    partition: usize,
    /// Index into the route table's Kafka→MQTT routes.
    route: usize,
    seq: Seq,
    qos: u8,
    generation: u64,
}

/// Per-partition state.
struct PartitionState {
    key: PartitionKey,
    tracker: AckTracker<i64>,
    /// Highest offset handed to MQTT so far.
    highest: i64,
    /// After a rewind, records above this offset are stale prefetches and skipped.
    skip_above: Option<i64>,
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
    producer: Arc<BridgeProducer>,
    mut dead_letter_reports: UnboundedReceiver<DeliveryReport>,
    observability: Arc<Observability>,
    mut shutdown: watch::Receiver<bool>,
    fatal: UnboundedSender<BridgeError>,
) {
    let topics = config.routes.consumed_topics();
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    if let Err(e) = consumer.subscribe(&topic_refs) {
        let _ = fatal.send(BridgeError::Kafka(format!(
            "subscribing to {topics:?}: {e}"
        )));
        return;
    }
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut p = Publisher {
        config: config.clone(),
        observability: observability.clone(),
        events_tx,
        fatal: fatal.clone(),
        generation: 0,
        connections: usize::from(config.config.mqtt.connections.max(1)),
        clients: Vec::new(),
        loop_tasks: Vec::new(),
        connected: Vec::new(),
        backoff: Backoff::default(),
        reconnect_at: Some(tokio::time::Instant::now()),
    };
    let mut state = State {
        partitions: Vec::new(),
        index: HashMap::new(),
        sent_order: vec![VecDeque::new(); p.connections],
        by_pkid: HashMap::new(),
        in_flight: 0,
        counters: config
            .routes
            .kafka_to_mqtt
            .iter()
            .map(|r| observability.metrics.route_counters(&r.name))
            .collect(),
    };
    let max_in_flight = config.config.max_in_flight_publishes as usize;
    let origin: Arc<str> = Arc::from(config.origin());
    let grace = Duration::from_secs(u64::from(config.config.shutdown_grace_period_seconds));
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        let can_take =
            drain_deadline.is_none() && p.all_connected() && state.in_flight < max_in_flight;
        tokio::select! {
            biased;
            Some(event) = events.recv() => match event {
                LoopEvent::Mqtt(generation, conn, event) if generation == p.generation => match event {
                    MqttEvent::Connected => {
                        if let Some(c) = p.connected.get_mut(conn) {
                            *c = true;
                        }
                        if p.all_connected() {
                            p.backoff.reset();
                            observability.health.mqtt_publisher_connected.store(true, Ordering::Relaxed);
                        }
                    }
                    MqttEvent::PublishSent(pkid) => state.on_sent(conn, pkid),
                    MqttEvent::PublishAcked(pkid) => state.on_acked(conn, pkid),
                    _ => {}
                },
                LoopEvent::Disconnected(generation) if generation == p.generation => {
                    p.connected.iter_mut().for_each(|c| *c = false);
                    observability.health.mqtt_publisher_connected.store(false, Ordering::Relaxed);
                    state.rewind(&consumer);
                    p.drop_client();
                    let delay = p.backoff.next_delay();
                    p.reconnect_at = Some(tokio::time::Instant::now() + delay);
                }
                _ => {}
            },
            Some(report) = dead_letter_reports.recv() => state.on_dead_letter_report(report, &producer, &config, &observability),
            message = consumer.recv(), if can_take => match message {
                Ok(m) => {
                    let key = m.key().map(<[u8]>::to_vec);
                    let payload = Bytes::copy_from_slice(m.payload().unwrap_or_default());
                    let own = m.headers().is_some_and(|h| {
                        h.iter().any(|h| h.key == ORIGIN_HEADER && h.value == Some(origin.as_bytes()))
                    });
                    state.on_record(
                        m.topic(), m.partition(), m.offset(), key, payload, own,
                        &config, &p, &producer, &observability, &origin, p.generation,
                    ).await;
                }
                Err(e) => tracing::warn!(error = %e, "Kafka consumer error"),
            },
            _ = tick.tick() => {
                observability.health.beat(heartbeat);
                state.commit(&consumer);
                observability.metrics.in_flight
                    .get_or_create(&vec![("direction", "kafka_to_mqtt".to_owned())])
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
            && (state.in_flight == 0 || tokio::time::Instant::now() >= deadline)
        {
            break;
        }
    }
    state.commit(&consumer);
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(error = %e, "final commit");
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

    fn start(&mut self) {
        self.generation += 1;
        self.reconnect_at = None;
        self.connected = vec![false; self.connections];
        for conn in 0..self.connections {
            if !self.start_connection(conn) {
                return;
            }
        }
    }

    /// Starts connection `conn`; false when it cannot be built (reported as fatal).
    fn start_connection(&mut self, conn: usize) -> bool {
        let client_id = self.config.client_id(format!("out-{conn}"));
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
                        if matches!(event, MqttEvent::Connected) {
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

    fn drop_client(&mut self) {
        self.clients.clear();
        for t in self.loop_tasks.drain(..) {
            t.abort();
        }
    }
}

struct State {
    partitions: Vec<PartitionState>,
    index: HashMap<PartitionKey, usize>,
    /// Per connection, publishes handed to rumqttc, in order, waiting for their packet id.
    sent_order: Vec<VecDeque<Token>>,
    /// Per connection and packet id, oldest first: rumqttc hands a QoS 2
    /// packet id out again once PUBREC arrived, before its PUBCOMP, so one id
    /// can name two publishes at once. The broker completes them in order.
    by_pkid: HashMap<(usize, u16), VecDeque<Token>>,
    in_flight: usize,
    /// Per route (index into the route table's Kafka→MQTT routes).
    counters: Vec<metrics::RouteCounters>,
}

impl State {
    fn partition(&mut self, topic: &str, partition: i32) -> usize {
        let key = (topic.to_owned(), partition);
        if let Some(i) = self.index.get(&key) {
            return *i;
        }
        let i = self.partitions.len();
        self.partitions.push(PartitionState {
            key: key.clone(),
            tracker: AckTracker::new(),
            highest: -1,
            skip_above: None,
        });
        self.index.insert(key, i);
        i
    }

    #[allow(clippy::too_many_arguments)]
    async fn on_record(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<Vec<u8>>,
        payload: Bytes,
        own: bool,
        config: &ValidatedConfig,
        publisher: &Publisher,
        producer: &BridgeProducer,
        observability: &Observability,
        origin: &Arc<str>,
        generation: u64,
    ) {
        let pi = self.partition(topic, partition);
        let part = &mut self.partitions[pi];
        if let Some(limit) = part.skip_above {
            if offset > limit {
                return;
            }
            part.skip_above = None;
        }
        part.highest = part.highest.max(offset);
        let m = &observability.metrics;
        let plans = config
            .routes
            .plan_kafka(topic, key.as_deref(), &payload, own);
        let pending = plans
            .iter()
            .filter(|(_, d)| !matches!(d, Disposition::Drop { .. }))
            .count() as u32;
        let seq = part.tracker.push(offset, pending);
        for (route, disposition) in plans {
            let name = &config.routes.kafka_to_mqtt[route].name;
            if let Some(c) = self.counters.get(route) {
                c.received.inc();
            }
            match disposition {
                Disposition::Forward(plan) => {
                    let Some((conn, client)) = publisher.client_for(pi) else {
                        // Cannot happen while taking records; rewinding redelivers it.
                        continue;
                    };
                    let Some(sent_order) = self.sent_order.get_mut(conn) else {
                        continue;
                    };
                    sent_order.push_back(Token {
                        partition: pi,
                        route,
                        seq,
                        qos: plan.qos,
                        generation,
                    });
                    self.in_flight += 1;
                    if let Err(e) = client
                        .publish(&plan.topic, plan.qos, plan.retain, payload.clone(), origin)
                        .await
                    {
                        tracing::warn!(error = %e, "MQTT publish request failed");
                    }
                }
                Disposition::DeadLetter { record, reason } => {
                    m.dead_lettered
                        .get_or_create(&metrics::route_reason(name, reason))
                        .inc();
                    let mut headers = record.headers;
                    headers.push((ORIGIN_HEADER.to_owned(), origin.as_bytes().to_vec()));
                    let now = Instant::now();
                    let pending = Box::new(PendingRecord {
                        owner: Owner::KafkaToMqtt,
                        epoch: pi as u64,
                        seq: Some(seq),
                        route,
                        dead_letter: true,
                        received: now,
                        sent: now,
                        topic: record.topic,
                        key: key.clone(),
                        payload: payload.clone(),
                        headers,
                    });
                    self.in_flight += 1;
                    send_dead_letter(producer, pending).await;
                }
                Disposition::Drop { reason } => {
                    m.dropped
                        .get_or_create(&metrics::route_reason(name, reason))
                        .inc();
                }
            }
        }
    }

    fn on_sent(&mut self, conn: usize, pkid: u16) {
        let Some(token) = self.sent_order.get_mut(conn).and_then(VecDeque::pop_front) else {
            return;
        };
        if token.qos == 0 {
            self.complete(&token);
        } else {
            self.by_pkid
                .entry((conn, pkid))
                .or_default()
                .push_back(token);
        }
    }

    fn on_acked(&mut self, conn: usize, pkid: u16) {
        let Some(waiting) = self.by_pkid.get_mut(&(conn, pkid)) else {
            return;
        };
        let token = waiting.pop_front();
        if waiting.is_empty() {
            self.by_pkid.remove(&(conn, pkid));
        }
        if let Some(token) = token {
            self.complete(&token);
        }
    }

    fn complete(&mut self, token: &Token) {
        if let Some(p) = self.partitions.get_mut(token.partition) {
            p.tracker.complete(token.seq);
        }
        if let Some(c) = self.counters.get(token.route) {
            c.forwarded.inc();
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        let _ = token.generation;
    }

    fn on_dead_letter_report(
        &mut self,
        report: DeliveryReport,
        producer: &BridgeProducer,
        config: &ValidatedConfig,
        observability: &Observability,
    ) {
        let record = report.record;
        match report.result {
            Ok(()) => {
                let pi = record.epoch as usize;
                if let (Some(p), Some(seq)) = (self.partitions.get_mut(pi), record.seq) {
                    p.tracker.complete(seq);
                }
                self.in_flight = self.in_flight.saturating_sub(1);
            }
            Err(e) => {
                let name = &config.routes.kafka_to_mqtt[record.route].name;
                observability
                    .metrics
                    .failed
                    .get_or_create(&metrics::route_reason(name, "kafka_delivery"))
                    .inc();
                tracing::warn!(error = %e, "dead-letter delivery failed; retrying");
                if let Err((e, _)) = kafka_side::send(producer, record) {
                    tracing::error!(error = %e, "dead-letter record could not be queued again; it will be consumed again after a restart");
                }
            }
        }
    }

    /// Forgets everything in flight and rewinds each partition to its
    /// oldest unacknowledged record.
    fn rewind(&mut self, consumer: &StreamConsumer<BridgeKafkaContext>) {
        for p in &mut self.partitions {
            if let Some(&front) = p.tracker.front() {
                tracing::info!(
                    topic = p.key.0,
                    partition = p.key.1,
                    offset = front,
                    "rewinding after MQTT connection loss"
                );
                if let Err(e) = consumer.seek(
                    &p.key.0,
                    p.key.1,
                    Offset::Offset(front),
                    Duration::from_secs(5),
                ) {
                    tracing::warn!(error = %e, "seek failed");
                }
                p.skip_above = Some(p.highest);
            }
            p.tracker.clear();
        }
        self.sent_order.iter_mut().for_each(VecDeque::clear);
        self.by_pkid.clear();
        self.in_flight = 0;
    }

    /// Commits, per partition, the offset after the last record whose
    /// publishes were all acknowledged.
    fn commit(&mut self, consumer: &StreamConsumer<BridgeKafkaContext>) {
        let mut tpl = TopicPartitionList::new();
        for p in &mut self.partitions {
            if let Some(last) = p.tracker.release().last() {
                let _ = tpl.add_partition_offset(&p.key.0, p.key.1, Offset::Offset(last + 1));
            }
        }
        if tpl.count() > 0
            && let Err(e) = consumer.commit(&tpl, CommitMode::Async)
        {
            tracing::warn!(error = %e, "offset commit failed");
        }
    }
}

async fn send_dead_letter(producer: &BridgeProducer, mut record: Box<PendingRecord>) {
    loop {
        match kafka_side::send(producer, record) {
            Ok(()) => return,
            Err((e, back)) => {
                record = back;
                if e.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::QueueFull) {
                    tracing::error!(error = %e, "dead-letter record not accepted");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with(records: usize) -> State {
        let mut state = State {
            partitions: Vec::new(),
            index: HashMap::new(),
            sent_order: vec![VecDeque::new(), VecDeque::new()],
            by_pkid: HashMap::new(),
            in_flight: 0,
            counters: vec![metrics::RouteCounters::default()],
        };
        let pi = state.partition("t", 0);
        for offset in 0..records {
            let seq = state.partitions[pi].tracker.push(offset as i64, 1);
            state.sent_order[0].push_back(Token {
                partition: pi,
                route: 0,
                seq,
                qos: 2,
                generation: 1,
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
        assert!(state.by_pkid.is_empty());
        assert_eq!(state.counters[0].forwarded.get(), 2);
        // A stray acknowledgement changes nothing.
        state.on_acked(0, 7);
        assert_eq!(state.in_flight, 0);
    }
}
