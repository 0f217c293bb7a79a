//! MQTT→Kafka, one instance per MQTT connection.
//!
//! A QoS 1/2 message is acknowledged to the broker only after Kafka — or the
//! route's dead-letter topic — holds every record it became (acks=all), and
//! acknowledgements leave in arrival order through an [`AckTracker`].
//! Thousands of records are in flight at once; the broker's in-flight window
//! (MQTT 5 Receive Maximum, Mosquitto `max_inflight_messages` for 3.1.1) and
//! the producer's bounded queue are the backpressure. After a reconnect
//! everything not yet acknowledged is forgotten: the persistent session
//! redelivers it.
//!
//! What Kafka does not take is judged by [`delivery::classify_kafka`]:
//! undeliverable records go to the dead-letter topic (or are dropped and
//! counted), refused and failed ones are held per topic in a [`RetryQueue`]
//! and sent again in arrival order. While a topic holds records, later
//! records for it queue behind them (per-key order); other topics flow. A
//! held message still holds back the acknowledgements of the messages that
//! arrived after it on the same connection (MQTT wants PUBACKs in order), so
//! other topics' traffic keeps flowing into Kafka until the connection's
//! in-flight window (Receive Maximum) is full of messages waiting behind it.
//!
//! The loop never blocks: a full producer queue parks the record and stops
//! taking MQTT messages until delivery reports free room, while the loop
//! keeps turning (heartbeat, reports, retries) — backpressure is not a hang.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::sync::watch;

use crate::ack_tracker::AckTracker;
use crate::config::ValidatedConfig;
use crate::delivery::{self, LogEvery, TOO_LARGE, Verdict};
use crate::error::BridgeError;
use crate::kafka_side::{self, BridgeProducer, DeliveryReport, Owner, PendingRecord};
use crate::metrics::{self, Observability, Refusal};
use crate::mqtt_side::{
    self, Backoff, ConnectionKind, IncomingPublish, MqttClient, MqttEvent, MqttEventLoop, PollError,
};
use crate::retry_queue::RetryQueue;
use bridge_core::routes::{Disposition, MqttMessage, ORIGIN_HEADER, dead_letter_headers};

/// Metric reason of a retained message the broker sent again because a
/// resumed MQTT 3.1.1 session re-subscribed (it reached Kafka before).
pub const RETAINED_REPLAY: &str = "retained_replay";

/// A message waiting for Kafka before its acknowledgement.
#[derive(Debug)]
struct Held {
    qos: u8,
    pkid: u16,
    received: Instant,
}

/// Room for events besides messages (connects, subscriptions, disconnects).
const EVENT_SLACK: usize = 64;

/// What the event-loop task passes to the pipeline.
enum LoopEvent {
    Mqtt(MqttEvent),
    Disconnected,
}

/// Runs connection `index` until shutdown has drained it.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    config: Arc<ValidatedConfig>,
    index: usize,
    heartbeat: usize,
    producer: Arc<BridgeProducer>,
    mut reports: UnboundedReceiver<DeliveryReport>,
    observability: Arc<Observability>,
    mut shutdown: watch::Receiver<bool>,
    fatal: UnboundedSender<BridgeError>,
) {
    let client_id = config.client_id(index);
    let (client, eventloop) = match mqtt_side::connect(
        &config,
        ConnectionKind {
            client_id: client_id.clone(),
            persistent: true,
            manual_acks: true,
            capacity: usize::from(config.config.mqtt_receive_maximum).max(100) * 2 + 100,
            outgoing_inflight: mqtt_side::DEFAULT_OUTGOING_INFLIGHT,
        },
    ) {
        Ok(c) => c,
        Err(e) => {
            let _ = fatal.send(e);
            return;
        }
    };
    // Bounded by the in-flight window: a broker that honours Receive Maximum
    // (or `max_inflight_messages`) never fills it. Mosquitto 2.0.11 sends a
    // resumed session's backlog past the window once acknowledgements flow
    // (bench/RESULTS.md); then the poll loop waits here and TCP keeps the
    // rest at the broker instead of in our memory. The pipeline never waits
    // on the poll loop in turn (acknowledgements are queued with `try_ack`),
    // so the two cannot wait for each other.
    let (events_tx, mut events) = mpsc::channel(
        usize::from(config.config.mqtt_receive_maximum)
            .max(usize::from(mqtt_side::DEFAULT_OUTGOING_INFLIGHT))
            + EVENT_SLACK,
    );
    let loop_task = tokio::spawn(poll_loop(
        eventloop,
        events_tx,
        observability.clone(),
        client_id.clone(),
        fatal,
    ));
    let mut pipeline = Pipeline::new(
        config.clone(),
        index,
        client,
        producer,
        observability.clone(),
    );
    let grace = Duration::from_secs(u64::from(config.config.shutdown_grace_period_seconds));
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        let taking = pipeline.can_take();
        tokio::select! {
            biased;
            Some(report) = reports.recv() => {
                pipeline.on_report(report);
                while let Ok(r) = reports.try_recv() {
                    pipeline.on_report(r);
                }
                pipeline.send_parked();
                pipeline.release_acks();
            }
            Some(event) = events.recv(), if taking => {
                match event {
                    LoopEvent::Mqtt(MqttEvent::Publish(p)) => {
                        if drain_deadline.is_none() {
                            pipeline.on_publish(p).await;
                        }
                    }
                    LoopEvent::Mqtt(MqttEvent::Connected { session_present, .. }) => {
                        if drain_deadline.is_none() {
                            pipeline.on_connected(session_present).await;
                        }
                    }
                    LoopEvent::Mqtt(MqttEvent::Subscribed(ok)) => {
                        observability.health.mqtt_subscribed[index].store(ok, Ordering::Relaxed);
                        if !ok {
                            tracing::error!(client_id, "the broker refused a subscription");
                        }
                    }
                    LoopEvent::Mqtt(_) => {}
                    LoopEvent::Disconnected => pipeline.on_disconnected(),
                }
                // The event loop just made room in the client's queue.
                if !pipeline.unsent_acks.is_empty() {
                    pipeline.release_acks();
                }
            }
            _ = tick.tick() => {
                observability.health.beat(heartbeat);
                pipeline.send_parked();
                pipeline.resend_due();
                pipeline.release_acks();
                pipeline.update_gauges();
            }
            _ = shutdown.changed(), if drain_deadline.is_none() => {
                tracing::info!(client_id, in_flight = pipeline.tracker.len(), "draining");
                drain_deadline = Some(tokio::time::Instant::now() + grace);
            }
        }
        if let Some(deadline) = drain_deadline
            && ((pipeline.tracker.is_empty() && pipeline.unsent_acks.is_empty())
                || tokio::time::Instant::now() >= deadline)
        {
            if !pipeline.tracker.is_empty() {
                tracing::warn!(
                    client_id,
                    unacknowledged = pipeline.tracker.len(),
                    "grace period over; the broker will redeliver what Kafka did not confirm"
                );
            }
            break;
        }
    }
    pipeline.client.disconnect().await;
    // Let the event loop send the last acknowledgements and the DISCONNECT.
    let _ = tokio::time::timeout(Duration::from_secs(2), loop_task).await;
}

/// Polls the event loop forever, reconnecting with capped backoff.
async fn poll_loop(
    mut eventloop: MqttEventLoop,
    events: mpsc::Sender<LoopEvent>,
    observability: Arc<Observability>,
    client_id: String,
    fatal: UnboundedSender<BridgeError>,
) {
    let mut backoff = Backoff::default();
    let labels = metrics::connection("mqtt", &client_id);
    loop {
        match eventloop.poll().await {
            Ok(MqttEvent::Other) => {}
            Ok(event) => {
                if matches!(event, MqttEvent::Connected { .. }) {
                    backoff.reset();
                    observability
                        .metrics
                        .connection_up
                        .get_or_create(&labels)
                        .set(1);
                    tracing::info!(client_id, "MQTT connected");
                }
                if events.send(LoopEvent::Mqtt(event)).await.is_err() {
                    return;
                }
            }
            Err(PollError::Refused(why)) => {
                let _ = fatal.send(BridgeError::MqttRefused(format!("{client_id}: {why}")));
                return;
            }
            // The pipeline dropped its client: it has finished.
            Err(PollError::Closed) => return,
            Err(PollError::Connection(why)) => {
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
                if events.send(LoopEvent::Disconnected).await.is_err() {
                    return;
                }
                let delay = backoff.next_delay();
                tracing::warn!(client_id, error = %why, ?delay, "MQTT connection lost; reconnecting");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Rate-limited log lines of one pipeline, one per kind of event.
struct Logs {
    dropped: LogEvery,
    held: LogEvery,
}

struct Pipeline {
    config: Arc<ValidatedConfig>,
    index: usize,
    /// Name of this pipeline in `/readyz` (`mqtt-<index>`).
    owner: String,
    client: MqttClient,
    producer: Arc<BridgeProducer>,
    observability: Arc<Observability>,
    tracker: AckTracker<Held>,
    /// Acknowledgements released in order but not yet taken by the client.
    unsent_acks: VecDeque<(u8, u16)>,
    /// Bumped on every (re)connect; reports of older epochs are ignored.
    epoch: u64,
    /// Arrival number of the next record.
    next_order: u64,
    /// Records waiting for room in the producer queue, in arrival order.
    /// While any waits, no new MQTT message is taken.
    parked: VecDeque<Box<PendingRecord>>,
    /// Records Kafka refused or failed to take, per Kafka topic.
    retries: RetryQueue<Box<PendingRecord>>,
    /// Whether `/readyz` currently lists refusals of this pipeline.
    refusals_shown: bool,
    /// A resumed MQTT 3.1.1 session re-subscribed: messages with the retain
    /// flag are the broker's replays of retained messages already carried.
    skip_retained: bool,
    /// Largest record Kafka takes (`kafka.producer.maxMessageBytes`).
    max_record_bytes: usize,
    /// Largest MQTT packet carried (`mqtt.maxPacketBytes`).
    max_packet_bytes: usize,
    conn_labels: metrics::Labels,
    /// Per route (index into the route table's MQTT→Kafka routes).
    counters: Vec<metrics::RouteCounters>,
    forward_latency: prometheus_client::metrics::histogram::Histogram,
    logs: Logs,
}

impl Pipeline {
    fn new(
        config: Arc<ValidatedConfig>,
        index: usize,
        client: MqttClient,
        producer: Arc<BridgeProducer>,
        observability: Arc<Observability>,
    ) -> Self {
        let client_id = config.client_id(index);
        Self {
            index,
            owner: format!("mqtt-{index}"),
            client,
            producer,
            tracker: AckTracker::new(),
            unsent_acks: VecDeque::new(),
            epoch: 0,
            next_order: 0,
            parked: VecDeque::new(),
            retries: RetryQueue::default(),
            refusals_shown: false,
            skip_retained: false,
            max_record_bytes: config.config.kafka.producer.max_message_bytes as usize,
            max_packet_bytes: config
                .config
                .mqtt
                .max_packet_bytes
                .map_or(mqtt_side::MQTT_MAX_PACKET_BYTES, |b| b as usize),
            conn_labels: metrics::connection("mqtt", &client_id),
            counters: config
                .routes
                .mqtt_to_kafka
                .iter()
                .map(|r| {
                    observability
                        .metrics
                        .route_counters(&r.name, metrics::MQTT_TO_KAFKA)
                })
                .collect(),
            forward_latency: observability
                .metrics
                .forward_latency_of(metrics::MQTT_TO_KAFKA),
            logs: Logs {
                dropped: LogEvery::new(Duration::from_secs(10)),
                held: LogEvery::new(Duration::from_secs(10)),
            },
            observability,
            config,
        }
    }

    /// Whether a new MQTT message may be taken: not while records wait for
    /// room in the producer queue, nor while as many records wait for a
    /// retry as the producer may hold (QoS 0 messages are not bounded by the
    /// broker's in-flight window).
    fn can_take(&self) -> bool {
        self.parked.is_empty()
            && self.retries.len() < self.config.config.kafka.producer.max_in_flight_records as usize
    }

    async fn on_connected(&mut self, session_present: bool) {
        self.epoch += 1;
        self.tracker.clear();
        // Packet ids of the old connection: the broker sends those messages again.
        self.unsent_acks.clear();
        self.parked.clear();
        self.retries.clear();
        self.show_refusals();
        // MQTT 3.1.1 has no Retain Handling: on a resumed session the broker
        // sends every matching retained message again when we re-subscribe
        // (with the retain flag, which over 3.1.1 marks exactly those). MQTT 5
        // subscribes with Retain Handling 1 instead (see `MqttClient::subscribe`).
        self.skip_retained = session_present && !self.client.is_v5();
        let mqtt = &self.config.config.mqtt;
        // Subscribe even on a resumed session: the routes may have changed.
        for (filter, qos) in self.config.routes.subscriptions() {
            let filter = match &mqtt.shared_subscription_group {
                Some(group) => format!("$share/{group}/{filter}"),
                None => filter,
            };
            if let Err(e) = self.client.subscribe(&filter, qos).await {
                tracing::error!(error = %e, filter, "subscribe request failed");
            }
        }
    }

    fn on_disconnected(&mut self) {
        self.observability.health.mqtt_subscribed[self.index].store(false, Ordering::Relaxed);
    }

    async fn on_publish(&mut self, p: IncomingPublish) {
        let config = self.config.clone();
        let observability = self.observability.clone();
        let m = &observability.metrics;
        let received = Instant::now();
        if self.skip_retained && p.retain {
            m.dropped
                .get_or_create(&metrics::route_reason("", RETAINED_REPLAY))
                .inc();
            if p.qos > 0 {
                self.tracker.push(
                    Held {
                        qos: p.qos,
                        pkid: p.pkid,
                        received,
                    },
                    0,
                );
                self.release_acks();
            }
            return;
        }
        let origin = config.origin();
        let is_own = p
            .user_properties
            .iter()
            .any(|(k, v)| k == ORIGIN_HEADER && v == origin);
        let msg = MqttMessage {
            topic: &p.topic,
            payload: &p.payload,
            qos: p.qos,
            retain: p.retain,
            user_properties: &p.user_properties,
            content_type: p.content_type.as_deref(),
        };
        let plans = config.routes.plan_mqtt(&msg, is_own);
        if plans.is_empty() {
            m.dropped
                .get_or_create(&metrics::route_reason("", "no_route"))
                .inc();
        }
        let records = plans
            .iter()
            .filter(|(_, d)| !matches!(d, Disposition::Drop { .. }))
            .count() as u32;
        let seq = (p.qos > 0).then(|| {
            self.tracker.push(
                Held {
                    qos: p.qos,
                    pkid: p.pkid,
                    received,
                },
                records,
            )
        });
        let packet_bytes =
            delivery::mqtt_publish_size(self.client.is_v5(), &p.topic, p.qos, p.payload.len(), &[]);
        for (route, disposition) in plans {
            let name = &config.routes.mqtt_to_kafka[route].name;
            if let Some(c) = self.counters.get(route) {
                c.received.inc();
            }
            let (plan, dead_letter) = match disposition {
                Disposition::Forward(plan) => (plan, false),
                Disposition::DeadLetter { record, reason } => {
                    m.dead_lettered
                        .get_or_create(&metrics::route_reason(name, reason))
                        .inc();
                    (record, true)
                }
                Disposition::Drop { reason } => {
                    self.count_drop(route, reason, &p.topic);
                    continue;
                }
            };
            self.next_order += 1;
            let record = Box::new(PendingRecord {
                owner: Owner::Mqtt(self.index),
                epoch: self.epoch,
                seq,
                order: self.next_order,
                partition: None,
                route,
                dead_letter,
                received,
                sent: received,
                topic: plan.topic,
                key: plan.key.map(Bytes::from),
                payload: p.payload.clone(),
                headers: plan.headers,
            });
            let record_bytes = delivery::kafka_record_size(
                record.payload.len(),
                record.key.as_ref().map_or(0, Bytes::len),
                &record.headers,
                origin,
            );
            if !dead_letter
                && (record_bytes > self.max_record_bytes || packet_bytes > self.max_packet_bytes)
            {
                let why = format!(
                    "message of {} bytes (MQTT packet {packet_bytes} bytes) is larger than \
                     kafka.producer.maxMessageBytes ({}) or mqtt.maxPacketBytes ({})",
                    p.payload.len(),
                    self.max_record_bytes,
                    self.max_packet_bytes
                );
                self.undeliverable(record, TOO_LARGE, &why, &p.topic);
                continue;
            }
            self.submit(record);
        }
        if seq.is_some() && records == 0 {
            self.release_acks();
        }
    }

    /// A message that can never be delivered as configured: to the route's
    /// dead-letter topic (payload cut to fit if it is too large), or dropped
    /// and counted. Its acknowledgement waits for the dead-letter record.
    fn undeliverable(
        &mut self,
        mut record: Box<PendingRecord>,
        reason: &'static str,
        why: &str,
        source_topic: &str,
    ) {
        let route = &self.config.routes.mqtt_to_kafka[record.route];
        let name = route.name.clone();
        let dead_letter_topic = route.dead_letter_topic.clone();
        let Some(dead_letter_topic) = dead_letter_topic.filter(|_| !record.dead_letter) else {
            // No dead-letter topic, or the dead-letter topic refused it too.
            let reason = if record.dead_letter {
                "dead_letter_undeliverable"
            } else {
                reason
            };
            self.count_drop(record.route, reason, source_topic);
            if let Some(seq) = record.seq {
                self.tracker.complete(seq);
            }
            return;
        };
        self.observability
            .metrics
            .dead_lettered
            .get_or_create(&metrics::route_reason(&name, reason))
            .inc();
        let headers = dead_letter_headers(&name, reason, why, source_topic);
        let key = record.key.as_ref().map_or(0, Bytes::len);
        record.payload = delivery::dead_letter_payload(
            &record.payload,
            self.max_record_bytes,
            key,
            &headers,
            self.config.origin(),
        );
        record.topic = dead_letter_topic.into();
        record.headers = headers;
        record.dead_letter = true;
        self.submit(record);
    }

    /// Counts a dropped message and says so in a rate-limited log line.
    fn count_drop(&mut self, route: usize, reason: &'static str, source_topic: &str) {
        let name = &self.config.routes.mqtt_to_kafka[route].name;
        self.observability
            .count_drop(&mut self.logs.dropped, name, reason, source_topic);
    }

    /// Sends a record unless older records must go first: those of its topic
    /// held for a retry, or any waiting for room in the producer queue.
    fn submit(&mut self, record: Box<PendingRecord>) {
        if self.retries.is_holding(&record.topic) {
            let (topic, order) = (record.topic.clone(), record.order);
            self.retries.push_behind(&topic, order, record);
        } else if !self.parked.is_empty() {
            self.parked.push_back(record);
        } else if let Err(record) = self.try_send(record) {
            self.parked.push_back(record);
        }
    }

    /// Hands a record to the producer; gives it back when the queue is full.
    fn try_send(&mut self, mut record: Box<PendingRecord>) -> Result<(), Box<PendingRecord>> {
        record.sent = Instant::now();
        match kafka_side::send(&self.producer, record, self.config.origin()) {
            Ok(()) => Ok(()),
            Err((e, back))
                if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
            {
                Err(back)
            }
            Err((e, back)) => {
                self.on_failure(back, &e);
                Ok(())
            }
        }
    }

    /// Sends parked records in order while the producer queue has room.
    fn send_parked(&mut self) {
        while let Some(record) = self.parked.pop_front() {
            if self.retries.is_holding(&record.topic) {
                let (topic, order) = (record.topic.clone(), record.order);
                self.retries.push_behind(&topic, order, record);
                continue;
            }
            if let Err(record) = self.try_send(record) {
                self.parked.push_front(record);
                return;
            }
        }
    }

    fn on_report(&mut self, report: DeliveryReport) {
        let record = report.record;
        if record.epoch != self.epoch {
            return;
        }
        match report.result {
            Ok(()) => {
                if !record.dead_letter
                    && let Some(c) = self.counters.get(record.route)
                {
                    c.forwarded.inc();
                }
                if self.retries.succeeded(&record.topic) {
                    tracing::info!(topic = &*record.topic, "Kafka takes records again");
                }
                if let Some(seq) = record.seq {
                    self.tracker.complete(seq);
                }
            }
            Err(e) => self.on_failure(record, &e),
        }
    }

    /// A record Kafka did not take: dead-lettered if it never can be,
    /// otherwise held for a retry (never acknowledged meanwhile).
    fn on_failure(&mut self, record: Box<PendingRecord>, error: &rdkafka::error::KafkaError) {
        let verdict = delivery::classify_kafka(error);
        if let Verdict::Undeliverable(reason) = verdict {
            let why = format!(
                "Kafka refused the record for topic {}: {error}",
                record.topic
            );
            let topic = record.topic.clone();
            self.undeliverable(record, reason, &why, &topic);
            return;
        }
        let name = &self.config.routes.mqtt_to_kafka[record.route].name;
        self.observability
            .metrics
            .failed
            .get_or_create(&metrics::route_reason(name, verdict.label()))
            .inc();
        if let Some(more) = self.logs.held.allow(Instant::now()) {
            tracing::warn!(
                route = name,
                topic = &*record.topic,
                reason = verdict.label(),
                %error,
                not_logged_since_last = more,
                "Kafka did not take a record; holding it (not acknowledged) for a retry"
            );
        }
        let (topic, order) = (record.topic.clone(), record.order);
        let name = name.clone();
        self.retries
            .hold(&topic, &name, order, record, verdict, Instant::now());
    }

    /// Sends again, in arrival order, the held records whose delay is over.
    fn resend_due(&mut self) {
        if self.retries.is_empty() {
            self.show_refusals();
            return;
        }
        for (_, records) in self.retries.take_due(Instant::now()) {
            for record in records {
                if !self.parked.is_empty() {
                    self.parked.push_back(record);
                } else if let Err(record) = self.try_send(record) {
                    self.parked.push_back(record);
                }
            }
        }
        self.show_refusals();
    }

    /// Tells `/readyz` which Kafka topics refuse this connection's records.
    fn show_refusals(&mut self) {
        let refusals: Vec<Refusal> = self
            .retries
            .holdings()
            .into_iter()
            .filter(|h| matches!(h.verdict, Verdict::Refused(_)))
            .map(|h| Refusal {
                route: h.context,
                target: format!("Kafka topic {}", h.target),
                reason: h.verdict.label(),
                since: h.since,
                held: h.held,
            })
            .collect();
        if refusals.is_empty() && !self.refusals_shown {
            return;
        }
        self.refusals_shown = !refusals.is_empty();
        self.observability
            .health
            .set_refusals(&self.owner, refusals);
    }

    /// Sends the acknowledgements that are due, in arrival order. Those the
    /// client's request queue has no room for yet wait in `unsent_acks`
    /// (never blocking: the event loop that empties the queue may itself be
    /// waiting for this pipeline to take an event).
    fn release_acks(&mut self) {
        let released = self.tracker.release();
        if !released.is_empty() {
            let now = Instant::now();
            for held in released {
                self.forward_latency
                    .observe(now.duration_since(held.received).as_secs_f64());
                self.unsent_acks.push_back((held.qos, held.pkid));
            }
        }
        while let Some(&(qos, pkid)) = self.unsent_acks.front() {
            if !self.client.try_ack(qos, pkid) {
                return;
            }
            self.unsent_acks.pop_front();
        }
    }

    fn update_gauges(&self) {
        let m = &self.observability.metrics;
        m.in_flight
            .get_or_create(&self.conn_labels)
            .set(self.tracker.len() as i64);
        m.ack_held_back_seconds
            .get_or_create(&self.conn_labels)
            .set(self.tracker.oldest_age().as_secs_f64());
        m.held_for_retry
            .get_or_create(&self.conn_labels)
            .set(self.retries.len() as i64);
    }
}
