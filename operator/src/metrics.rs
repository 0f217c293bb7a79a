//! Prometheus metrics: reconciles, failures by reason, duration, and per
//! bridge whether it is Ready and whether its rollout is halted (what the
//! alert rules of the chart watch).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Content type of [`Metrics::render`]'s body: prometheus-client encodes
/// OpenMetrics (`# EOF`, `_total` counters), which a scraper told
/// `text/plain` would parse as the older Prometheus format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Label of the failure counter: the error's stable reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// [`crate::error::Error::reason`].
    pub reason: String,
}

/// Labels of the per-bridge gauges: the bridge's namespace and name (one
/// series per bridge, removed when it is deleted).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BridgeLabels {
    pub namespace: String,
    pub bridge: String,
}

/// The operator's metrics and their registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    reconciles: Counter,
    failures: Family<ReasonLabel, Counter>,
    duration: Histogram,
    bridge_ready: Family<BridgeLabels, Gauge>,
    bridge_rollout_halted: Family<BridgeLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mqtt_kafka_operator");
        let reconciles = Counter::default();
        let failures = Family::<ReasonLabel, Counter>::default();
        let duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconciles that failed (API errors, or a bridge that cannot run as specified), by reason",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconciles",
            duration.clone(),
        );
        let bridge_ready = Family::<BridgeLabels, Gauge>::default();
        let bridge_rollout_halted = Family::<BridgeLabels, Gauge>::default();
        registry.register(
            "bridge_ready",
            "1 while the bridge's Ready condition is True, per bridge",
            bridge_ready.clone(),
        );
        registry.register(
            "bridge_rollout_halted",
            "1 while the bridge's Ready reason is RolloutHalted (the operator stopped its rollout), per bridge",
            bridge_rollout_halted.clone(),
        );
        Self {
            registry: Arc::new(registry),
            reconciles,
            failures,
            duration,
            bridge_ready,
            bridge_rollout_halted,
        }
    }
}

impl Metrics {
    /// Records one reconcile.
    pub fn observe(&self, took: Duration, failure: Option<&str>) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
        if let Some(reason) = failure {
            self.failures
                .get_or_create(&ReasonLabel {
                    reason: reason.into(),
                })
                .inc();
        }
    }

    /// Records a bridge's status as the last reconcile computed it.
    pub fn set_bridge_status(
        &self,
        namespace: &str,
        name: &str,
        ready: bool,
        rollout_halted: bool,
    ) {
        let labels = bridge_labels(namespace, name);
        self.bridge_ready
            .get_or_create(&labels)
            .set(i64::from(ready));
        self.bridge_rollout_halted
            .get_or_create(&labels)
            .set(i64::from(rollout_halted));
    }

    /// Removes a deleted bridge's series.
    pub fn forget_bridge(&self, namespace: &str, name: &str) {
        let labels = bridge_labels(namespace, name);
        self.bridge_ready.remove(&labels);
        self.bridge_rollout_halted.remove(&labels);
    }

    /// The OpenMetrics text format (served as [`OPENMETRICS_CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

fn bridge_labels(namespace: &str, name: &str) -> BridgeLabels {
    BridgeLabels {
        namespace: namespace.into(),
        bridge: name.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_labelled_by_reason() {
        let m = Metrics::default();
        m.observe(Duration::from_millis(5), None);
        m.observe(Duration::from_millis(5), Some("SecretNotFound"));
        let text = m.render();
        assert!(
            text.contains("mqtt_kafka_operator_reconciles_total 2"),
            "{text}"
        );
        assert!(text.contains("reason=\"SecretNotFound\""), "{text}");
        assert!(
            text.ends_with("# EOF\n"),
            "OpenMetrics, as its content type says"
        );
    }

    #[test]
    fn bridge_status_is_one_series_per_bridge_until_it_is_deleted() {
        let m = Metrics::default();
        m.set_bridge_status("iot", "fleet", false, true);
        m.set_bridge_status("iot", "temps", true, false);
        let text = m.render();
        for line in [
            r#"mqtt_kafka_operator_bridge_ready{namespace="iot",bridge="fleet"} 0"#,
            r#"mqtt_kafka_operator_bridge_rollout_halted{namespace="iot",bridge="fleet"} 1"#,
            r#"mqtt_kafka_operator_bridge_ready{namespace="iot",bridge="temps"} 1"#,
            r#"mqtt_kafka_operator_bridge_rollout_halted{namespace="iot",bridge="temps"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        // The next reconcile overwrites, the deletion removes.
        m.set_bridge_status("iot", "fleet", true, false);
        m.forget_bridge("iot", "temps");
        let text = m.render();
        assert!(
            text.contains(r#"mqtt_kafka_operator_bridge_ready{namespace="iot",bridge="fleet"} 1"#),
            "{text}"
        );
        assert!(!text.contains("temps"), "{text}");
    }
}
