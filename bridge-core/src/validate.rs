//! Every check a bridge's connections and routes must pass that needs no
//! secret value and no cluster: the one verdict of the operator (on a
//! custom resource's spec) and of bridge-runtime (on its file, and in
//! `bridge-runtime check`). The CRD's schema says the same with the
//! patterns and limits of [`crate::rules`]; the validation corpus
//! (`bridge-core/tests/validation-corpus.yaml`) holds all three to it.

use std::sync::LazyLock;

use regex::Regex;

use crate::error::SpecError;
use crate::routes::RouteTable;
use crate::rules::{self, *};
use crate::{
    KafkaAuthenticationType, KafkaSpec, MqttAuthenticationType, MqttSpec, Route, is_secret_property,
};

/// What passing the checks yields: the parsed broker address and the
/// compiled routes, so nothing downstream parses them again.
#[derive(Clone, Debug)]
pub struct ValidatedSpec {
    /// The MQTT broker, from `mqtt.url`.
    pub mqtt_endpoint: MqttEndpoint,
    /// The compiled routes.
    pub routes: RouteTable,
}

/// Where the MQTT broker is, from `mqtt.url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqttEndpoint {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// `mqtts://`.
    pub tls: bool,
}

/// Checks a custom resource's bridge: `replicas` pods of
/// `mqtt.connections` connections each.
pub fn validate_bridge<S>(
    replicas: i32,
    mqtt: &MqttSpec<S>,
    kafka: &KafkaSpec<S>,
    routes: &[Route],
) -> Result<ValidatedSpec, SpecError> {
    if !REPLICAS.contains(&i64::from(replicas)) {
        return Err(out_of_range("replicas", &REPLICAS));
    }
    let pods = u32::try_from(replicas).unwrap_or(0).max(1);
    validate(mqtt, kafka, routes, pods)
}

/// Checks the connections and routes of a bridge run by `pods` processes
/// with the same configuration (bridge-runtime's own file: 1).
pub fn validate<S>(
    mqtt: &MqttSpec<S>,
    kafka: &KafkaSpec<S>,
    routes: &[Route],
    pods: u32,
) -> Result<ValidatedSpec, SpecError> {
    let mqtt_endpoint = check_mqtt(mqtt, routes, pods)?;
    check_kafka(kafka)?;
    if !ROUTES.contains(&routes.len()) {
        return Err(out_of_range("routes", &ROUTES));
    }
    let routes = RouteTable::compile(routes)?;
    Ok(ValidatedSpec {
        mqtt_endpoint,
        routes,
    })
}

fn regex(pattern: &'static str) -> Regex {
    #[allow(clippy::expect_used)]
    Regex::new(pattern).expect("the patterns of `rules` are constants, compiled in its tests")
}

/// A compiled pattern of [`crate::rules`].
pub(crate) struct Pattern(LazyLock<Regex>);

macro_rules! pattern {
    ($name:ident = $p:expr) => {
        pub(crate) static $name: Pattern = Pattern(LazyLock::new(|| regex($p)));
    };
}
pattern!(MQTT_URL = MQTT_URL_PATTERN);
pattern!(BOOTSTRAP_SERVERS = BOOTSTRAP_SERVERS_PATTERN);
pattern!(CLIENT_ID_PREFIX = CLIENT_ID_PREFIX_PATTERN);
pattern!(SHARED_GROUP = SHARED_GROUP_PATTERN);
pattern!(ROUTE_NAME = ROUTE_NAME_PATTERN);
pattern!(KAFKA_TOPIC = KAFKA_TOPIC_PATTERN);
pattern!(KAFKA_TOPIC_TEMPLATE = KAFKA_TOPIC_TEMPLATE_PATTERN);
pattern!(MQTT_TOPIC_FILTER = MQTT_TOPIC_FILTER_PATTERN);
pattern!(MQTT_TOPIC_TEMPLATE = MQTT_TOPIC_TEMPLATE_PATTERN);
pattern!(JSON_FIELD = JSON_FIELD_PATTERN);

impl Pattern {
    /// Whether `text` matches.
    pub(crate) fn matches(&self, text: &str) -> bool {
        self.0.is_match(text)
    }
}

pub(crate) fn out_of_range<T: std::fmt::Display>(
    field: &str,
    range: &std::ops::RangeInclusive<T>,
) -> SpecError {
    SpecError::new(
        field,
        format!("must be between {} and {}", range.start(), range.end()),
    )
}

pub(crate) fn check_length(
    field: &str,
    value: &str,
    range: &std::ops::RangeInclusive<usize>,
) -> Result<(), SpecError> {
    if range.contains(&value.chars().count()) {
        Ok(())
    } else {
        Err(SpecError::new(
            field,
            format!(
                "must be {} to {} characters long",
                range.start(),
                range.end()
            ),
        ))
    }
}

fn check_mqtt<S>(
    mqtt: &MqttSpec<S>,
    routes: &[Route],
    pods: u32,
) -> Result<MqttEndpoint, SpecError> {
    let endpoint = parse_mqtt_url(&mqtt.url)?;
    check_length(
        "mqtt.clientIdPrefix",
        &mqtt.client_id_prefix,
        &CLIENT_ID_PREFIX_LENGTH,
    )?;
    if !CLIENT_ID_PREFIX.matches(&mqtt.client_id_prefix) {
        return Err(SpecError::new(
            "mqtt.clientIdPrefix",
            "may use only letters, digits, `.`, `_` and `-`",
        ));
    }
    if !KEEP_ALIVE_SECONDS.contains(&mqtt.keep_alive_seconds) {
        return Err(out_of_range("mqtt.keepAliveSeconds", &KEEP_ALIVE_SECONDS));
    }
    if !CONNECTIONS.contains(&mqtt.connections) {
        return Err(out_of_range("mqtt.connections", &CONNECTIONS));
    }
    if let Some(group) = &mqtt.shared_subscription_group {
        check_length("mqtt.sharedSubscriptionGroup", group, &SHARED_GROUP_LENGTH)?;
        if !SHARED_GROUP.matches(group) {
            return Err(SpecError::new(
                "mqtt.sharedSubscriptionGroup",
                "must not contain `/`, `+` or `#`",
            ));
        }
    }
    let subscribers = u32::from(mqtt.connections).saturating_mul(pods);
    if subscribers > 1
        && mqtt.shared_subscription_group.is_none()
        && routes.iter().any(|r| r.mqtt_to_kafka.is_some())
    {
        return Err(SpecError::new(
            "mqtt.sharedSubscriptionGroup",
            format!(
                "required with {subscribers} MQTT connections (replicas × mqtt.connections): \
                 without it every connection receives every message and Kafka gets duplicates"
            ),
        ));
    }
    if let Some(bytes) = mqtt.max_packet_bytes
        && !MAX_PACKET_BYTES.contains(&bytes)
    {
        return Err(out_of_range("mqtt.maxPacketBytes", &MAX_PACKET_BYTES));
    }
    if let Some(tls) = &mqtt.tls {
        if !endpoint.tls {
            return Err(SpecError::new(
                "mqtt.tls",
                "TLS settings need an `mqtts://` url",
            ));
        }
        if tls.client_certificate.is_some() != tls.client_key.is_some() {
            return Err(SpecError::new(
                "mqtt.tls.clientKey",
                "clientCertificate and clientKey go together",
            ));
        }
    }
    if let Some(auth) = &mqtt.authentication
        && auth.kind == MqttAuthenticationType::Password
    {
        match auth.username.as_deref() {
            None | Some("") => {
                return Err(SpecError::new(
                    "mqtt.authentication.username",
                    "required for type `password`",
                ));
            }
            Some(u) => check_length("mqtt.authentication.username", u, &USERNAME_LENGTH)?,
        }
        if auth.password_secret.is_none() {
            return Err(SpecError::new(
                "mqtt.authentication.passwordSecret",
                "required for type `password`",
            ));
        }
    }
    Ok(endpoint)
}

fn check_kafka<S>(kafka: &KafkaSpec<S>) -> Result<(), SpecError> {
    if !BOOTSTRAP_SERVERS.matches(&kafka.bootstrap_servers) {
        return Err(SpecError::new(
            "kafka.bootstrapServers",
            "must be host:port[,host:port…] with ports up to 65535 and no spaces",
        ));
    }
    if let Some(tls) = &kafka.tls
        && tls.client_certificate.is_some() != tls.client_key.is_some()
    {
        return Err(SpecError::new(
            "kafka.tls.clientKey",
            "clientCertificate and clientKey go together",
        ));
    }
    if let Some(auth) = &kafka.authentication
        && auth.kind != KafkaAuthenticationType::None
    {
        match auth.username.as_deref() {
            None | Some("") => {
                return Err(SpecError::new(
                    "kafka.authentication.username",
                    "required unless type is `none`",
                ));
            }
            Some(u) => check_length("kafka.authentication.username", u, &USERNAME_LENGTH)?,
        }
        if auth.password_secret.is_none() {
            return Err(SpecError::new(
                "kafka.authentication.passwordSecret",
                "required unless type is `none`",
            ));
        }
    }
    if kafka.properties.len() > MAX_PROPERTIES {
        return Err(SpecError::new(
            "kafka.properties",
            format!("at most {MAX_PROPERTIES} properties"),
        ));
    }
    for key in kafka.properties.keys() {
        if is_secret_property(key) {
            return Err(SpecError::new(
                "kafka.properties",
                format!(
                    "`{key}` carries a secret: use kafka.authentication.passwordSecret or kafka.tls instead"
                ),
            ));
        }
        if rules::is_managed_property(key) {
            return Err(SpecError::new(
                "kafka.properties",
                format!(
                    "`{key}` is set by the bridge (delivery guarantees or a typed field such as \
                     kafka.producer.*, kafka.consumer.*, kafka.authentication) and cannot be overridden"
                ),
            ));
        }
    }
    let p = &kafka.producer;
    let ranges = [
        ("kafka.producer.lingerMs", p.linger_ms, &LINGER_MS),
        (
            "kafka.producer.maxInFlightRecords",
            p.max_in_flight_records,
            &MAX_IN_FLIGHT_RECORDS,
        ),
        (
            "kafka.producer.queueMaxKbytes",
            p.queue_max_kbytes,
            &QUEUE_MAX_KBYTES,
        ),
        (
            "kafka.producer.deliveryTimeoutMs",
            p.delivery_timeout_ms,
            &DELIVERY_TIMEOUT_MS,
        ),
        (
            "kafka.producer.maxMessageBytes",
            p.max_message_bytes,
            &MAX_MESSAGE_BYTES,
        ),
    ];
    for (field, value, range) in ranges {
        if !range.contains(&value) {
            return Err(out_of_range(field, range));
        }
    }
    if let Some(group) = &kafka.consumer.group_id {
        check_length("kafka.consumer.groupId", group, &GROUP_ID_LENGTH)?;
    }
    Ok(())
}

/// Parses `mqtt.url` (see [`MQTT_URL_PATTERN`]).
pub fn parse_mqtt_url(url: &str) -> Result<MqttEndpoint, SpecError> {
    let field = "mqtt.url";
    if !MQTT_URL.matches(url) {
        return Err(SpecError::new(
            field,
            "must be mqtt://host[:port] or mqtts://host[:port] (port up to 65535; \
             credentials go in mqtt.authentication)",
        ));
    }
    let tls = url.starts_with("mqtts://");
    let rest = url
        .split_once("://")
        .map_or("", |(_, r)| r)
        .trim_end_matches('/');
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, after)) => (host, after.strip_prefix(':')),
            None => (v6, None),
        },
        None => match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        },
    };
    let port = match port {
        Some(p) => p
            .parse()
            .map_err(|_| SpecError::new(field, "the port must be at most 65535"))?,
        None if tls => 8883,
        None => 1883,
    };
    Ok(MqttEndpoint {
        host: host.to_owned(),
        port,
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        assert_eq!(
            parse_mqtt_url("mqtts://broker.example").unwrap(),
            MqttEndpoint {
                host: "broker.example".into(),
                port: 8883,
                tls: true
            }
        );
        assert_eq!(parse_mqtt_url("mqtt://[::1]:1884").unwrap().host, "::1");
        assert_eq!(parse_mqtt_url("mqtt://h:1884/").unwrap().port, 1884);
        assert!(parse_mqtt_url("mqtt://user:pw@h:1").is_err());
        assert!(parse_mqtt_url("mqtt://h:65536").is_err());
    }
}
