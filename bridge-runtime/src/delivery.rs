//! What a failed delivery means, on either side, and the size checks made
//! before sending. Pure logic: the pipelines act on the [`Verdict`].
//!
//! - [`Verdict::Undeliverable`]: can never be delivered as configured (too
//!   large, an invalid topic, a payload the broker calls malformed). The
//!   message goes to the route's dead-letter topic, or is dropped and
//!   counted where the route has none; it is acknowledged (MQTT) or
//!   committed (Kafka) only after that.
//! - [`Verdict::Refused`]: refused until someone fixes something
//!   (authorization, a topic that does not exist yet, a quota). Never
//!   acknowledged or committed; retried with capped, jittered backoff and
//!   named by `/readyz`.
//! - [`Verdict::Transient`]: anything else (timeouts, a broker restarting):
//!   retried the same way, but not a reason to report the route as refused.

use bytes::Bytes;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// What to do with a message a side did not take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Dead-letter it (or drop and count it); the label names why.
    Undeliverable(&'static str),
    /// Hold and retry; `/readyz` names the route, target and label.
    Refused(&'static str),
    /// Hold and retry quietly.
    Transient(&'static str),
}

impl Verdict {
    /// The stable label (metric `reason`, `x-bridge-error` header, `/readyz`).
    pub fn label(self) -> &'static str {
        match self {
            Self::Undeliverable(l) | Self::Refused(l) | Self::Transient(l) => l,
        }
    }
}

/// Label of a message larger than a configured or announced limit.
pub const TOO_LARGE: &str = "too_large";

/// Classifies a Kafka produce error (from `send` or a delivery report).
pub fn classify_kafka(error: &KafkaError) -> Verdict {
    classify_kafka_code(error.rdkafka_error_code())
}

/// [`classify_kafka`] on the bare error code.
pub fn classify_kafka_code(code: Option<RDKafkaErrorCode>) -> Verdict {
    use RDKafkaErrorCode as C;
    match code {
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize) => Verdict::Undeliverable(TOO_LARGE),
        Some(C::InvalidRecord | C::InvalidMessage) => {
            Verdict::Undeliverable("kafka_invalid_record")
        }
        Some(C::InvalidTopic) => Verdict::Undeliverable("kafka_invalid_topic"),
        Some(C::TopicAuthorizationFailed) => Verdict::Refused("kafka_topic_authorization_failed"),
        Some(C::ClusterAuthorizationFailed) => {
            Verdict::Refused("kafka_cluster_authorization_failed")
        }
        Some(C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition) => {
            Verdict::Refused("kafka_topic_missing")
        }
        Some(C::PolicyViolation) => Verdict::Refused("kafka_policy_violation"),
        Some(C::ThrottlingQuotaExceeded) => Verdict::Refused("kafka_quota_exceeded"),
        Some(C::MessageTimedOut) => Verdict::Transient("kafka_delivery_timeout"),
        _ => Verdict::Transient("kafka_delivery_failed"),
    }
}

/// Classifies an MQTT 5 PUBACK/PUBREC reason code; `None` means the broker
/// took the message (0x00 Success, 0x10 No matching subscribers).
pub fn classify_mqtt_reason(code: u8) -> Option<Verdict> {
    match code {
        0x00 | 0x10 => None,
        0x87 => Some(Verdict::Refused("mqtt_not_authorized")),
        0x97 => Some(Verdict::Refused("mqtt_quota_exceeded")),
        0x90 => Some(Verdict::Undeliverable("mqtt_topic_invalid")),
        0x99 => Some(Verdict::Undeliverable("mqtt_payload_format_invalid")),
        0x91 => Some(Verdict::Transient("mqtt_packet_id_in_use")),
        0x83 => Some(Verdict::Refused("mqtt_implementation_specific_error")),
        _ => Some(Verdict::Refused("mqtt_unspecified_error")),
    }
}

/// Bytes of MQTT's variable-length integer for `n`.
fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Size on the wire of a PUBLISH packet, as a broker's or client's Maximum
/// Packet Size counts it. `user_properties` only for MQTT 5 (`v5`).
pub fn mqtt_publish_size(
    v5: bool,
    topic: &str,
    qos: u8,
    payload: usize,
    user_properties: &[(&str, &str)],
) -> usize {
    let mut body = 2 + topic.len() + if qos > 0 { 2 } else { 0 } + payload;
    if v5 {
        let props: usize = user_properties
            .iter()
            .map(|(k, v)| 1 + 2 + k.len() + 2 + v.len())
            .sum();
        body += varint_len(props) + props;
    }
    1 + varint_len(body) + body
}

/// Size of a Kafka record as librdkafka compares it with `message.max.bytes`
/// (payload, key and headers, plus a record's own overhead), with the
/// origin header `kafka_side::send` adds to every record (bridge `origin`).
pub fn kafka_record_size(
    payload: usize,
    key: usize,
    headers: &[(String, Vec<u8>)],
    origin: &str,
) -> usize {
    const RECORD_OVERHEAD: usize = 64;
    const HEADER_OVERHEAD: usize = 10;
    let headers: usize = headers
        .iter()
        .map(|(k, v)| k.len() + v.len() + HEADER_OVERHEAD)
        .sum();
    let origin_header = bridge_core::routes::ORIGIN_HEADER.len() + origin.len() + HEADER_OVERHEAD;
    payload + key + headers + origin_header + RECORD_OVERHEAD
}

/// The payload of a dead-letter record: the original's, cut so that the
/// whole record stays within `limit` (the original may be too large to be
/// held whole). A shared slice, no copy.
pub fn dead_letter_payload(
    payload: &Bytes,
    limit: usize,
    key: usize,
    headers: &[(String, Vec<u8>)],
    origin: &str,
) -> Bytes {
    let budget = limit.saturating_sub(kafka_record_size(0, key, headers, origin));
    if payload.len() > budget {
        payload.slice(..budget)
    } else {
        payload.clone()
    }
}

/// At most one log line per interval for one kind of event, saying how many
/// were not logged: a refused topic at 20,000 msg/s must not write 20,000
/// lines a second.
#[derive(Debug)]
pub struct LogEvery {
    every: std::time::Duration,
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl LogEvery {
    /// One line per `every`.
    pub const fn new(every: std::time::Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a line may be written now, `n` being how many events
    /// since the last line were not logged; `None` otherwise.
    pub fn allow(&mut self, now: std::time::Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_errors_are_classified() {
        use RDKafkaErrorCode as C;
        for (code, verdict) in [
            (C::MessageSizeTooLarge, Verdict::Undeliverable(TOO_LARGE)),
            (
                C::InvalidTopic,
                Verdict::Undeliverable("kafka_invalid_topic"),
            ),
            (
                C::TopicAuthorizationFailed,
                Verdict::Refused("kafka_topic_authorization_failed"),
            ),
            (
                C::UnknownTopicOrPartition,
                Verdict::Refused("kafka_topic_missing"),
            ),
            (C::UnknownTopic, Verdict::Refused("kafka_topic_missing")),
            (
                C::MessageTimedOut,
                Verdict::Transient("kafka_delivery_timeout"),
            ),
            (
                C::NotEnoughReplicas,
                Verdict::Transient("kafka_delivery_failed"),
            ),
        ] {
            assert_eq!(classify_kafka_code(Some(code)), verdict, "{code:?}");
        }
        assert!(matches!(classify_kafka_code(None), Verdict::Transient(_)));
    }

    #[test]
    fn mqtt_reason_codes_are_classified() {
        assert_eq!(classify_mqtt_reason(0x00), None);
        assert_eq!(
            classify_mqtt_reason(0x10),
            None,
            "no subscribers is success"
        );
        assert_eq!(
            classify_mqtt_reason(0x87),
            Some(Verdict::Refused("mqtt_not_authorized"))
        );
        assert_eq!(
            classify_mqtt_reason(0x97),
            Some(Verdict::Refused("mqtt_quota_exceeded"))
        );
        assert!(matches!(
            classify_mqtt_reason(0x90),
            Some(Verdict::Undeliverable(_))
        ));
        assert!(matches!(
            classify_mqtt_reason(0x99),
            Some(Verdict::Undeliverable(_))
        ));
        assert!(matches!(
            classify_mqtt_reason(0x80),
            Some(Verdict::Refused(_))
        ));
    }

    #[test]
    fn publish_sizes_count_every_byte() {
        // Fixed header 1 + remaining length 1 + topic length 2 + "a/b" 3 + packet id 2 + payload 5.
        assert_eq!(mqtt_publish_size(false, "a/b", 1, 5, &[]), 14);
        assert_eq!(mqtt_publish_size(false, "a/b", 0, 5, &[]), 12);
        // MQTT 5: properties length 1 + user property (1 + 2 + 1 + 2 + 1).
        assert_eq!(mqtt_publish_size(true, "a/b", 1, 5, &[("k", "v")]), 22);
        // A 2 MiB payload needs a 4-byte remaining length.
        let big = 2 * 1024 * 1024;
        assert_eq!(
            mqtt_publish_size(false, "t", 1, big, &[]),
            1 + 4 + 2 + 1 + 2 + big
        );
    }

    #[test]
    fn log_lines_are_rate_limited() {
        let mut log = LogEvery::new(std::time::Duration::from_secs(10));
        let t0 = std::time::Instant::now();
        assert_eq!(log.allow(t0), Some(0));
        assert_eq!(log.allow(t0 + std::time::Duration::from_secs(1)), None);
        assert_eq!(log.allow(t0 + std::time::Duration::from_secs(2)), None);
        assert_eq!(log.allow(t0 + std::time::Duration::from_secs(11)), Some(2));
    }

    #[test]
    fn dead_letter_budget_leaves_room_for_key_and_headers() {
        let headers = vec![("x-bridge-error".to_owned(), b"too_large".to_vec())];
        let big = Bytes::from(vec![b'x'; 2000]);
        let budget = dead_letter_payload(&big, 1000, 10, &headers, "bridge-a").len();
        // The origin header `kafka_side::send` adds counts too.
        assert_eq!(kafka_record_size(budget, 10, &headers, "bridge-a"), 1000);
        assert!(kafka_record_size(budget, 10, &headers, "") < 1000);
        assert_eq!(
            dead_letter_payload(&big, 10, 10, &headers, "bridge-a").len(),
            0
        );
        // A payload that fits is kept whole.
        let small = Bytes::from_static(b"fits");
        assert_eq!(
            dead_letter_payload(&small, 1000, 10, &headers, "bridge-a"),
            small
        );
    }
}
