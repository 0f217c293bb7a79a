//! Prometheus metrics and the health state `/healthz` and `/readyz` report.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label set: a list of name/value pairs.
pub type Labels = Vec<(&'static str, String)>;

/// Values of the `direction` label.
pub const MQTT_TO_KAFKA: &str = "mqtt_to_kafka";
pub const KAFKA_TO_MQTT: &str = "kafka_to_mqtt";

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric the bridge exports.
pub struct Metrics {
    registry: Registry,
    /// Messages received, per route (and its direction).
    pub received: Family<Labels, Counter>,
    /// Messages carried to their destination, per route (and its direction).
    pub forwarded: Family<Labels, Counter>,
    /// Failed deliveries (retried, never acknowledged), per route and reason.
    pub failed: Family<Labels, Counter>,
    /// Messages sent to a dead-letter topic, per route and reason.
    pub dead_lettered: Family<Labels, Counter>,
    /// Messages counted and dropped, per route and reason.
    pub dropped: Family<Labels, Counter>,
    /// Messages waiting for their acknowledgement, per direction.
    pub in_flight: Family<Labels, Gauge>,
    /// Per direction, time from receipt to acknowledgement: MQTT→Kafka from
    /// the MQTT message to its PUBACK (Kafka holds every record), Kafka→MQTT
    /// from the record to the broker's acknowledgement of its publish.
    pub forward_latency: Family<Labels, Histogram>,
    /// Time Kafka took to confirm a record.
    pub kafka_delivery_latency: Histogram,
    /// Reconnects per side.
    pub reconnects: Family<Labels, Counter>,
    /// 1 while a connection is up.
    pub connection_up: Family<Labels, Gauge>,
    /// Age in seconds of the oldest message whose acknowledgement is held back, per connection.
    pub ack_held_back_seconds: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Messages a side refused or failed to take, held for a retry, per connection.
    pub held_for_retry: Family<Labels, Gauge>,
    /// Kafka partitions taken away from this bridge by a consumer group rebalance.
    pub partitions_revoked: Counter,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("bridge");
        let received = Family::<Labels, Counter>::default();
        let forwarded = Family::<Labels, Counter>::default();
        let failed = Family::<Labels, Counter>::default();
        let dead_lettered = Family::<Labels, Counter>::default();
        let dropped = Family::<Labels, Counter>::default();
        let in_flight = Family::<Labels, Gauge>::default();
        let forward_latency = Family::<Labels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let kafka_delivery_latency = latency_histogram();
        let reconnects = Family::<Labels, Counter>::default();
        let connection_up = Family::<Labels, Gauge>::default();
        let ack_held_back_seconds = Family::default();
        let held_for_retry = Family::<Labels, Gauge>::default();
        let partitions_revoked = Counter::default();
        registry.register("messages_received", "Messages received", received.clone());
        registry.register(
            "messages_forwarded",
            "Messages carried to their destination",
            forwarded.clone(),
        );
        registry.register(
            "messages_failed",
            "Failed deliveries (retried)",
            failed.clone(),
        );
        registry.register(
            "messages_dead_lettered",
            "Messages sent to a dead-letter topic",
            dead_lettered.clone(),
        );
        registry.register("messages_dropped", "Messages dropped", dropped.clone());
        registry.register(
            "in_flight_messages",
            "Messages waiting for their acknowledgement",
            in_flight.clone(),
        );
        registry.register(
            "forward_latency_seconds",
            "Receipt to acknowledgement",
            forward_latency.clone(),
        );
        registry.register(
            "kafka_delivery_latency_seconds",
            "Kafka produce to broker acknowledgement",
            kafka_delivery_latency.clone(),
        );
        registry.register("reconnects", "Reconnects", reconnects.clone());
        registry.register(
            "connection_up",
            "1 while the connection is up",
            connection_up.clone(),
        );
        registry.register(
            "ack_held_back_seconds",
            "Age of the oldest unacknowledged message",
            ack_held_back_seconds.clone(),
        );
        registry.register(
            "held_for_retry_messages",
            "Messages a side refused or failed to take, held for a retry",
            held_for_retry.clone(),
        );
        registry.register(
            "kafka_partitions_revoked",
            "Kafka partitions taken away by a consumer group rebalance",
            partitions_revoked.clone(),
        );
        Self {
            registry,
            received,
            forwarded,
            failed,
            dead_lettered,
            dropped,
            in_flight,
            forward_latency,
            kafka_delivery_latency,
            reconnects,
            connection_up,
            ack_held_back_seconds,
            held_for_retry,
            partitions_revoked,
        }
    }

    /// The per-message counters of one route, looked up once: a family
    /// lookup per message hashed and allocated its label set every time.
    /// Labelled with the route and its direction ([`MQTT_TO_KAFKA`],
    /// [`KAFKA_TO_MQTT`]), so dashboards can sum each way.
    pub fn route_counters(&self, name: &str, direction: &str) -> RouteCounters {
        let labels = vec![
            ("route", name.to_owned()),
            ("direction", direction.to_owned()),
        ];
        RouteCounters {
            received: self.received.get_or_create(&labels).clone(),
            forwarded: self.forwarded.get_or_create(&labels).clone(),
        }
    }

    /// The forward latency histogram of one direction (`mqtt_to_kafka`, `kafka_to_mqtt`).
    pub fn forward_latency_of(&self, direction: &str) -> Histogram {
        self.forward_latency
            .get_or_create(&vec![("direction", direction.to_owned())])
            .clone()
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Handles of a route's per-message counters (clones share the counts).
#[derive(Clone, Debug, Default)]
pub struct RouteCounters {
    /// `messages_received{route,direction}`.
    pub received: Counter,
    /// `messages_forwarded{route,direction}`.
    pub forwarded: Counter,
}

/// Labels for a route-level counter.
pub fn route(route: &str) -> Labels {
    vec![("route", route.to_owned())]
}

/// Labels for a route-level counter with a reason.
pub fn route_reason(route: &str, reason: &str) -> Labels {
    vec![("route", route.to_owned()), ("reason", reason.to_owned())]
}

/// Labels for a connection.
pub fn connection(side: &str, name: &str) -> Labels {
    vec![("side", side.to_owned()), ("connection", name.to_owned())]
}

/// Health flags set by the event loops and read by `/healthz` and `/readyz`.
pub struct Health {
    started: Instant,
    /// Per MQTT→Kafka connection: connected and subscribed.
    pub mqtt_subscribed: Vec<AtomicBool>,
    /// The Kafka→MQTT publisher connection is up (true when there is none).
    pub mqtt_publisher_connected: AtomicBool,
    /// Kafka answered the last metadata request.
    pub kafka_reachable: AtomicBool,
    /// Every fixed Kafka topic the routes name exists.
    pub topics_exist: AtomicBool,
    /// Milliseconds since start at which each loop last turned.
    heartbeats: Vec<AtomicU64>,
    /// Per pipeline (e.g. `mqtt-0`, `kafka-to-mqtt`), what refuses its messages.
    refusals: Mutex<BTreeMap<String, Vec<Refusal>>>,
    /// Undeliverable messages dropped (no dead-letter topic) since start.
    dropped: AtomicU64,
    /// Route and reason of the last of them, and when.
    last_drop: Mutex<Option<(String, &'static str, Instant)>>,
}

/// A destination refusing a route's messages until someone fixes something
/// (an ACL, a missing topic, a quota); `/readyz` lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The route.
    pub route: String,
    /// The destination, e.g. ``Kafka topic `sensors.s7` ``.
    pub target: String,
    /// The reason label (`kafka_topic_authorization_failed`, …).
    pub reason: &'static str,
    /// Since when.
    pub since: Instant,
    /// Messages held for it.
    pub held: usize,
}

impl Refusal {
    fn describe(&self) -> String {
        format!(
            "route {}: {} refuses messages ({}) for {} s, {} held",
            self.route,
            self.target,
            self.reason,
            self.since.elapsed().as_secs(),
            self.held
        )
    }
}

impl Health {
    /// Health for `connections` MQTT→Kafka connections and `loops` heartbeating loops.
    pub fn new(connections: usize, loops: usize) -> Self {
        Self {
            started: Instant::now(),
            mqtt_subscribed: (0..connections).map(|_| AtomicBool::new(false)).collect(),
            mqtt_publisher_connected: AtomicBool::new(true),
            kafka_reachable: AtomicBool::new(false),
            topics_exist: AtomicBool::new(false),
            heartbeats: (0..loops).map(|_| AtomicU64::new(0)).collect(),
            refusals: Mutex::new(BTreeMap::new()),
            dropped: AtomicU64::new(0),
            last_drop: Mutex::new(None),
        }
    }

    /// Replaces what pipeline `owner` reports as refusing its messages.
    pub fn set_refusals(&self, owner: &str, refusals: Vec<Refusal>) {
        if let Ok(mut map) = self.refusals.lock() {
            if refusals.is_empty() {
                map.remove(owner);
            } else {
                map.insert(owner.to_owned(), refusals);
            }
        }
    }

    /// An undeliverable message of `route` was dropped (the route has no
    /// dead-letter topic): `/readyz` reports it, and so the bridge's status.
    pub fn record_drop(&self, route: &str, reason: &'static str) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_drop.lock() {
            *last = Some((route.to_owned(), reason, Instant::now()));
        }
    }

    /// One line on the undeliverable messages dropped since start, if any:
    /// `dropped 3 undeliverable messages; last: route r, reason too_large, 12 s ago`.
    pub fn drops(&self) -> Option<String> {
        let d = self.drop_report()?;
        Some(format!(
            "dropped {} undeliverable messages; last: route {}, reason {}, {} s ago",
            d.count, d.route, d.reason, d.seconds_ago
        ))
    }

    fn drop_report(&self) -> Option<bridge_core::report::DropReport> {
        let count = self.dropped.load(Ordering::Relaxed);
        if count == 0 {
            return None;
        }
        let (route, reason, at) = self.last_drop.lock().ok()?.clone()?;
        Some(bridge_core::report::DropReport {
            count,
            route,
            reason: reason.to_owned(),
            seconds_ago: at.elapsed().as_secs(),
        })
    }

    /// The bridge's own account of itself for the operator (`/report`).
    pub fn report(&self) -> bridge_core::report::BridgeReport {
        let not_ready: Vec<String> = self
            .not_connected()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let refusals: Vec<bridge_core::report::RefusalReport> = self
            .refusals
            .lock()
            .map(|map| {
                map.values()
                    .flatten()
                    .map(|r| bridge_core::report::RefusalReport {
                        route: r.route.clone(),
                        target: r.target.clone(),
                        reason: r.reason.to_owned(),
                        held: r.held as u64,
                        seconds: r.since.elapsed().as_secs(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        bridge_core::report::BridgeReport {
            ready: not_ready.is_empty() && refusals.is_empty(),
            not_ready,
            refusals,
            dropped: self.drop_report(),
        }
    }

    /// Loop `i` is turning.
    pub fn beat(&self, i: usize) {
        if let Some(h) = self.heartbeats.get(i) {
            h.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    }

    /// Every loop turned within `max_age`.
    pub fn alive(&self, max_age: Duration) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        self.heartbeats
            .iter()
            .all(|h| now.saturating_sub(h.load(Ordering::Relaxed)) <= max_age.as_millis() as u64)
    }

    /// What is not ready, empty when ready.
    pub fn not_ready(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .not_connected()
            .into_iter()
            .map(str::to_owned)
            .collect();
        if let Ok(map) = self.refusals.lock() {
            out.extend(map.values().flatten().map(Refusal::describe));
        }
        out
    }

    fn not_connected(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if !self
            .mqtt_subscribed
            .iter()
            .all(|s| s.load(Ordering::Relaxed))
        {
            out.push("mqtt not connected and subscribed");
        }
        if !self.mqtt_publisher_connected.load(Ordering::Relaxed) {
            out.push("mqtt publisher not connected");
        }
        if !self.kafka_reachable.load(Ordering::Relaxed) {
            out.push("kafka not reachable");
        }
        if !self.topics_exist.load(Ordering::Relaxed) {
            out.push("kafka topics missing");
        }
        out
    }
}

/// Metrics and health, shared by every task.
pub struct Observability {
    /// Metrics.
    pub metrics: Metrics,
    /// Health.
    pub health: Health,
}

impl Observability {
    /// Counts a message of `route` dropped for `reason`. Undeliverable ones
    /// (not the bridge's own looping messages) also reach `/readyz` and
    /// `/report`, and at most one log line per `log` interval says so.
    pub fn count_drop(
        &self,
        log: &mut crate::delivery::LogEvery,
        route: &str,
        reason: &'static str,
        source_topic: &str,
    ) {
        self.metrics
            .dropped
            .get_or_create(&route_reason(route, reason))
            .inc();
        if reason == bridge_core::routes::OWN_MESSAGE {
            return;
        }
        self.health.record_drop(route, reason);
        if let Some(more) = log.allow(Instant::now()) {
            tracing::warn!(
                route,
                reason,
                source_topic,
                not_logged_since_last = more,
                "message dropped: the route has no deadLetterTopic (see bridge_messages_dropped_total)"
            );
        }
    }

    /// New shared state.
    pub fn new(connections: usize, loops: usize) -> Arc<Self> {
        Arc::new(Self {
            metrics: Metrics::new(),
            health: Health::new(connections, loops),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_route_labels() {
        let o = Observability::new(1, 1);
        o.metrics
            .dropped
            .get_or_create(&route_reason("r1", "missing_field"))
            .inc();
        o.metrics.kafka_delivery_latency.observe(0.01);
        o.metrics.route_counters("r2", MQTT_TO_KAFKA).received.inc();
        let text = o.metrics.encode();
        assert!(
            text.contains(
                r#"bridge_messages_received_total{route="r2",direction="mqtt_to_kafka"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"bridge_messages_dropped_total{route="r1",reason="missing_field"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("bridge_kafka_delivery_latency_seconds_bucket"),
            "{text}"
        );
    }

    #[test]
    fn readiness_lists_what_is_missing() {
        let h = Health::new(2, 1);
        assert_eq!(h.not_ready().len(), 3);
        for s in &h.mqtt_subscribed {
            s.store(true, Ordering::Relaxed);
        }
        h.kafka_reachable.store(true, Ordering::Relaxed);
        h.topics_exist.store(true, Ordering::Relaxed);
        assert!(h.not_ready().is_empty());
        h.set_refusals(
            "mqtt-0",
            vec![Refusal {
                route: "in".into(),
                target: "Kafka topic `t`".into(),
                reason: "kafka_topic_authorization_failed",
                since: Instant::now(),
                held: 3,
            }],
        );
        assert_eq!(
            h.not_ready(),
            vec![
                "route in: Kafka topic `t` refuses messages (kafka_topic_authorization_failed) for 0 s, 3 held"
            ]
        );
        h.set_refusals("mqtt-0", Vec::new());
        assert!(h.not_ready().is_empty());
        assert_eq!(h.drops(), None);
        h.record_drop("in", "too_large");
        h.record_drop("in", "payload_not_json");
        assert_eq!(
            h.drops().as_deref(),
            Some(
                "dropped 2 undeliverable messages; last: route in, reason payload_not_json, 0 s ago"
            )
        );
        h.beat(0);
        assert!(h.alive(Duration::from_secs(1)));
    }
}
