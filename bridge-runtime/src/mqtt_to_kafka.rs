//! MQTT→Kafka, one instance per MQTT connection.
//!
//! A QoS 1/2 message is acknowledged to the broker only after Kafka
//! confirmed every record it became (acks=all), and acknowledgements leave
//! in arrival order through an [`AckTracker`]. Thousands of records are in
//! flight at once; the broker's in-flight window (MQTT 5 Receive Maximum,
//! Mosquitto `max_inflight_messages` for 3.1.1) and the producer's bounded
//! queue are the backpressure. After a reconnect everything not yet
//! acknowledged is forgotten: the persistent session redelivers it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::sync::watch;

use crate::ack_tracker::AckTracker;
use crate::config::ValidatedConfig;
use crate::error::BridgeError;
use crate::kafka_side::{self, BridgeProducer, DeliveryReport, Owner, PendingRecord};
use crate::metrics::{self, Observability};
use crate::mqtt_side::{
    self, Backoff, ConnectionKind, IncomingPublish, MqttClient, MqttEvent, MqttEventLoop, PollError,
};
use crate::routes::{Disposition, MqttMessage, ORIGIN_HEADER};

/// A message waiting for Kafka before its acknowledgement.
#[derive(Debug)]
struct Held {
    qos: u8,
    pkid: u16,
    received: Instant,
}

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
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let loop_task = tokio::spawn(poll_loop(
        eventloop,
        events_tx,
        observability.clone(),
        client_id.clone(),
        fatal,
    ));
    let mut pipeline = Pipeline {
        config: config.clone(),
        index,
        client,
        producer,
        observability: observability.clone(),
        tracker: AckTracker::new(),
        epoch: 0,
        retries: VecDeque::new(),
        conn_labels: metrics::connection("mqtt", &client_id),
        counters: config
            .routes
            .mqtt_to_kafka
            .iter()
            .map(|r| observability.metrics.route_counters(&r.name))
            .collect(),
        forward_latency: observability.metrics.forward_latency_of("mqtt_to_kafka"),
    };
    let grace = Duration::from_secs(u64::from(config.config.shutdown_grace_period_seconds));
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            biased;
            Some(report) = reports.recv() => {
                pipeline.on_report(report);
                while let Ok(r) = reports.try_recv() {
                    pipeline.on_report(r);
                }
                pipeline.release_acks().await;
            }
            Some(event) = events.recv() => {
                match event {
                    LoopEvent::Mqtt(MqttEvent::Publish(p)) => {
                        if drain_deadline.is_none() {
                            pipeline.on_publish(p, &mut reports).await;
                        }
                    }
                    LoopEvent::Mqtt(MqttEvent::Connected) => {
                        if drain_deadline.is_none() {
                            pipeline.on_connected().await;
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
            }
            _ = tick.tick() => {
                observability.health.beat(heartbeat);
                pipeline.resend_due(&mut reports).await;
                pipeline.update_gauges();
            }
            _ = shutdown.changed(), if drain_deadline.is_none() => {
                tracing::info!(client_id, in_flight = pipeline.tracker.len(), "draining");
                drain_deadline = Some(tokio::time::Instant::now() + grace);
            }
        }
        if let Some(deadline) = drain_deadline
            && (pipeline.tracker.is_empty() || tokio::time::Instant::now() >= deadline)
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
    events: UnboundedSender<LoopEvent>,
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
                if matches!(event, MqttEvent::Connected) {
                    backoff.reset();
                    observability
                        .metrics
                        .connection_up
                        .get_or_create(&labels)
                        .set(1);
                    tracing::info!(client_id, "MQTT connected");
                }
                if events.send(LoopEvent::Mqtt(event)).is_err() {
                    return;
                }
            }
            Err(PollError::Refused(why)) => {
                let _ = fatal.send(BridgeError::MqttRefused(format!("{client_id}: {why}")));
                return;
            }
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
                if events.send(LoopEvent::Disconnected).is_err() {
                    return;
                }
                if why.contains("Requests done") {
                    return;
                }
                let delay = backoff.next_delay();
                tracing::warn!(client_id, error = %why, ?delay, "MQTT connection lost; reconnecting");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

struct Pipeline {
    config: Arc<ValidatedConfig>,
    index: usize,
    client: MqttClient,
    producer: Arc<BridgeProducer>,
    observability: Arc<Observability>,
    tracker: AckTracker<Held>,
    /// Bumped on every (re)connect; reports of older epochs are ignored.
    epoch: u64,
    /// Failed records waiting to be sent again.
    retries: VecDeque<(Instant, Box<PendingRecord>)>,
    conn_labels: metrics::Labels,
    /// Per route (index into the route table's MQTT→Kafka routes).
    counters: Vec<metrics::RouteCounters>,
    forward_latency: prometheus_client::metrics::histogram::Histogram,
}

impl Pipeline {
    async fn on_connected(&mut self) {
        self.epoch += 1;
        self.tracker.clear();
        self.retries.clear();
        let mqtt = &self.config.config.mqtt;
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

    async fn on_publish(
        &mut self,
        p: IncomingPublish,
        reports: &mut UnboundedReceiver<DeliveryReport>,
    ) {
        let config = self.config.clone();
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
        let observability = self.observability.clone();
        let m = &observability.metrics;
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
                    received: Instant::now(),
                },
                records,
            )
        });
        let now = Instant::now();
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
                    m.dropped
                        .get_or_create(&metrics::route_reason(name, reason))
                        .inc();
                    continue;
                }
            };
            let mut headers = plan.headers;
            headers.push((ORIGIN_HEADER.to_owned(), origin.as_bytes().to_vec()));
            let record = Box::new(PendingRecord {
                owner: Owner::Mqtt(self.index),
                epoch: self.epoch,
                seq,
                route,
                dead_letter,
                received: now,
                sent: now,
                topic: plan.topic,
                key: plan.key,
                payload: p.payload.clone(),
                headers,
            });
            self.send_blocking(record, reports).await;
        }
        if seq.is_some() && records == 0 {
            self.release_acks().await;
        }
    }

    /// Sends a record, waiting (while still handling delivery reports) as
    /// long as the producer queue is full.
    async fn send_blocking(
        &mut self,
        mut record: Box<PendingRecord>,
        reports: &mut UnboundedReceiver<DeliveryReport>,
    ) {
        loop {
            record.sent = Instant::now();
            match kafka_side::send(&self.producer, record) {
                Ok(()) => return,
                Err((e, back)) => {
                    record = back;
                    if e.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::QueueFull) {
                        self.fail(record, &e);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    while let Ok(r) = reports.try_recv() {
                        self.on_report(r);
                    }
                    self.release_acks().await;
                }
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
                if let Some(seq) = record.seq {
                    self.tracker.complete(seq);
                }
            }
            Err(e) => self.fail(record, &e),
        }
    }

    /// A record Kafka did not take: retried after a pause, unless it can never succeed.
    fn fail(&mut self, record: Box<PendingRecord>, error: &rdkafka::error::KafkaError) {
        let name = self.config.routes.mqtt_to_kafka[record.route].name.clone();
        let m = &self.observability.metrics;
        if kafka_side::is_permanent(error) {
            tracing::error!(route = name, topic = record.topic, %error, "Kafka refused the record for good; dropping it");
            m.dropped
                .get_or_create(&metrics::route_reason(&name, "kafka_rejected"))
                .inc();
            if let Some(seq) = record.seq {
                self.tracker.complete(seq);
            }
            return;
        }
        tracing::warn!(route = name, topic = record.topic, %error, "Kafka delivery failed; retrying");
        m.failed
            .get_or_create(&metrics::route_reason(&name, "kafka_delivery"))
            .inc();
        self.retries
            .push_back((Instant::now() + Duration::from_secs(1), record));
    }

    async fn resend_due(&mut self, reports: &mut UnboundedReceiver<DeliveryReport>) {
        while self
            .retries
            .front()
            .is_some_and(|(due, _)| *due <= Instant::now())
        {
            if let Some((_, record)) = self.retries.pop_front() {
                self.send_blocking(record, reports).await;
            }
        }
    }

    /// Sends the acknowledgements that are due, in arrival order.
    async fn release_acks(&mut self) {
        let released = self.tracker.release();
        if released.is_empty() {
            return;
        }
        let now = Instant::now();
        for held in &released {
            self.forward_latency
                .observe(now.duration_since(held.received).as_secs_f64());
        }
        for held in released {
            if let Err(e) = self.client.ack(held.qos, held.pkid).await {
                tracing::warn!(error = %e, "could not queue an acknowledgement");
            }
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
    }
}
