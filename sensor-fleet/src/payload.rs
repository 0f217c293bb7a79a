//! The sensor reading carried end to end. The timestamp inside the payload is
//! what end-to-end latency is measured from, so no side channel is needed.

use serde::{Deserialize, Serialize};

/// One reading as it travels: `{"sensor_id","temperature","timestamp","seq"}`.
/// `timestamp` is Unix time in microseconds when the reading was published.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reading<'a> {
    #[serde(borrow)]
    pub sensor_id: std::borrow::Cow<'a, str>,
    pub temperature: f64,
    pub timestamp: u64,
    pub seq: u64,
}

/// Encodes a reading without going through serde (it is on the publisher's
/// hot path); `sensor_id` must not need JSON escaping (ids are generated).
pub fn encode(sensor_id: &str, temperature: f64, timestamp_us: u64, seq: u64) -> Vec<u8> {
    format!(
        r#"{{"sensor_id":"{sensor_id}","temperature":{temperature:.2},"timestamp":{timestamp_us},"seq":{seq}}}"#
    )
    .into_bytes()
}

/// Decodes a payload produced by [`encode`] (or any JSON with those fields).
pub fn decode(payload: &[u8]) -> Option<Reading<'_>> {
    serde_json::from_slice(payload).ok()
}

/// Unix time now in microseconds (0 if the clock is before 1970).
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The id of sensor `index`: `<prefix>-<index, 6 digits>`, so ids sort like indices.
pub fn sensor_id(prefix: &str, index: usize) -> String {
    format!("{prefix}-{index:06}")
}

/// A plausible temperature that varies with sensor and time (not random, so
/// payloads are reproducible).
pub fn temperature(index: usize, seq: u64) -> f64 {
    20.0 + (index % 17) as f64 * 0.5 + ((seq % 60) as f64 / 60.0 * std::f64::consts::TAU).sin()
}

/// Expands a topic template: `{id}` becomes the sensor id.
pub fn topic(template: &str, sensor_id: &str) -> String {
    template.replace("{id}", sensor_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let bytes = encode("s-000001", 21.456, 1_700_000_000_123_456, 42);
        let r = decode(&bytes).expect("decodes");
        assert_eq!(r.sensor_id, "s-000001");
        assert_eq!(r.timestamp, 1_700_000_000_123_456);
        assert_eq!(r.seq, 42);
        assert!((r.temperature - 21.46).abs() < 1e-9);
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("valid JSON");
        assert_eq!(v["sensor_id"], "s-000001");
    }

    #[test]
    fn decode_rejects_garbage_and_missing_fields() {
        assert!(decode(b"not json").is_none());
        assert!(decode(br#"{"sensor_id":"a","seq":1}"#).is_none());
    }

    #[test]
    fn ids_and_topics() {
        assert_eq!(sensor_id("sensor", 7), "sensor-000007");
        assert_eq!(
            topic("sensors/{id}/temperature", "sensor-000007"),
            "sensors/sensor-000007/temperature"
        );
        assert!(now_micros() > 1_600_000_000_000_000);
    }
}
