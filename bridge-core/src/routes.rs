//! The route table: which MQTT messages go to which Kafka topic with which
//! key and headers, which Kafka records go to which MQTT topic, and what
//! happens to a message a route cannot map (dead-letter or counted drop).
//! Pure logic, no I/O, so `bridge-runtime check` can show the same decisions.

use std::collections::{BTreeMap, HashSet};

use crate::{KafkaKeyType, Route};

use crate::error::SpecError;
use crate::json_field::json_field_text_in;
use crate::rules::{
    JSON_FIELD_LENGTH, KAFKA_TOPIC_LENGTH, KAFKA_TOPICS_PER_ROUTE, KEY_LEVEL,
    MQTT_TOPIC_FILTER_LENGTH, MQTT_TOPIC_TEMPLATE_LENGTH, QOS, ROUTE_NAME_LENGTH,
};
use crate::topic::{KafkaTopicTemplate, MqttTopicTemplate, TopicFilter, Unresolved};
use crate::validate::{
    JSON_FIELD, KAFKA_TOPIC, KAFKA_TOPIC_TEMPLATE, MQTT_TOPIC_FILTER, MQTT_TOPIC_TEMPLATE,
    ROUTE_NAME, check_length,
};

/// Header (Kafka) and user property (MQTT 5) marking what this bridge
/// published, so it is not carried back the other way.
pub const ORIGIN_HEADER: &str = "x-bridge-origin";
/// Dead-letter header: the route that could not map the message.
pub const DEAD_LETTER_ROUTE_HEADER: &str = "x-bridge-route";
/// Dead-letter header: the reason label (`missing_field`, …).
pub const DEAD_LETTER_REASON_HEADER: &str = "x-bridge-error";
/// Dead-letter header: the reason in words.
pub const DEAD_LETTER_MESSAGE_HEADER: &str = "x-bridge-error-message";
/// Dead-letter header: the topic the message came from.
pub const SOURCE_TOPIC_HEADER: &str = "source.topic";

/// How the record key is chosen, checked against the filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRule {
    /// No key.
    None,
    /// The MQTT topic.
    MqttTopic,
    /// A wildcard level (1-based).
    Level(usize),
    /// A JSON payload field path.
    Field(String),
}

/// A compiled MQTT→Kafka route.
#[derive(Clone, Debug)]
pub struct MqttRoute {
    /// Route name (metric label).
    pub name: String,
    /// The filter it subscribes to.
    pub filter: TopicFilter,
    /// Subscription QoS.
    pub qos: u8,
    /// Kafka topic template.
    pub kafka_topic: KafkaTopicTemplate,
    /// Key rule.
    pub key: KeyRule,
    /// Copy MQTT metadata into headers.
    pub headers: bool,
    /// Dead-letter topic, if any.
    pub dead_letter_topic: Option<String>,
}

/// A compiled Kafka→MQTT route.
#[derive(Clone, Debug)]
pub struct KafkaRoute {
    /// Route name (metric label).
    pub name: String,
    /// Kafka topics consumed.
    pub kafka_topics: Vec<String>,
    /// MQTT topic template.
    pub mqtt_topic: MqttTopicTemplate,
    /// Publish QoS.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
    /// Dead-letter topic, if any.
    pub dead_letter_topic: Option<String>,
}

/// All routes of a bridge, compiled.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    /// MQTT→Kafka routes.
    pub mqtt_to_kafka: Vec<MqttRoute>,
    /// Kafka→MQTT routes.
    pub kafka_to_mqtt: Vec<KafkaRoute>,
}

/// The MQTT message as the route table needs to see it.
#[derive(Clone, Copy, Debug)]
pub struct MqttMessage<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Payload.
    pub payload: &'a [u8],
    /// QoS it was received with.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
    /// MQTT 5 user properties.
    pub user_properties: &'a [(String, String)],
    /// MQTT 5 content type.
    pub content_type: Option<&'a str>,
}

/// A Kafka record to produce (the payload is the message's own).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordPlan {
    /// Kafka topic (shared: a fixed route's topic is not copied per message).
    pub topic: std::sync::Arc<str>,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// What becomes of a message on one route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disposition<T> {
    /// Carried to its destination.
    Forward(T),
    /// Sent to the route's dead-letter topic.
    DeadLetter {
        /// The dead-letter record.
        record: RecordPlan,
        /// Why.
        reason: &'static str,
    },
    /// Counted and forgotten.
    Drop {
        /// Why (metric label).
        reason: &'static str,
    },
}

/// Where a Kafka record goes in MQTT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishPlan {
    /// MQTT topic.
    pub topic: String,
    /// QoS.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
}

impl RouteTable {
    /// Compiles and checks the configured routes (the rules of
    /// [`crate::rules`]; fields named `routes[i]…`).
    pub fn compile(routes: &[Route]) -> Result<Self, SpecError> {
        let mut table = Self::default();
        let mut names = HashSet::new();
        for (i, route) in routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            check_length(&format!("{at}.name"), &route.name, &ROUTE_NAME_LENGTH)?;
            if !ROUTE_NAME.matches(&route.name) {
                return Err(SpecError::new(
                    format!("{at}.name"),
                    "must use lower-case letters, digits and `-`, starting and ending with a letter or digit",
                ));
            }
            if !names.insert(route.name.as_str()) {
                return Err(SpecError::new(
                    format!("{at}.name"),
                    format!("duplicate route name `{}`", route.name),
                ));
            }
            if let Some(dl) = &route.dead_letter_topic {
                check_kafka_topic(&format!("{at}.deadLetterTopic"), dl)?;
            }
            match (&route.mqtt_to_kafka, &route.kafka_to_mqtt) {
                (Some(m), None) => {
                    let at = format!("{at}.mqttToKafka");
                    let field = format!("{at}.mqttTopicFilter");
                    check_length(&field, &m.mqtt_topic_filter, &MQTT_TOPIC_FILTER_LENGTH)?;
                    if !MQTT_TOPIC_FILTER.matches(&m.mqtt_topic_filter) {
                        return Err(SpecError::new(
                            field,
                            "`+` and `#` must take a whole level and `#` must be the last level",
                        ));
                    }
                    let filter = TopicFilter::parse(&m.mqtt_topic_filter)
                        .map_err(|e| SpecError::new(field, e))?;
                    check_qos(m.qos, &at)?;
                    let field = format!("{at}.kafkaTopic");
                    check_length(&field, &m.kafka_topic, &KAFKA_TOPIC_LENGTH)?;
                    if !KAFKA_TOPIC_TEMPLATE.matches(&m.kafka_topic) {
                        return Err(SpecError::new(
                            field,
                            "may use only a-z A-Z 0-9 . _ - and wildcard levels {1}, {2}, …",
                        ));
                    }
                    let kafka_topic = KafkaTopicTemplate::parse(&m.kafka_topic, &filter)
                        .map_err(|e| SpecError::new(field, e))?;
                    let key = match m.key.kind {
                        KafkaKeyType::None => KeyRule::None,
                        KafkaKeyType::MqttTopic => KeyRule::MqttTopic,
                        KafkaKeyType::TopicLevel => {
                            let count = filter.wildcard_count();
                            match m.key.level {
                                Some(l) if KEY_LEVEL.contains(&l) && usize::from(l) <= count => {
                                    KeyRule::Level(usize::from(l))
                                }
                                other => {
                                    return Err(SpecError::new(
                                        format!("{at}.key.level"),
                                        format!(
                                            "{} but the filter `{filter}` has {count} wildcard level(s): \
                                             name one of them (1 = the first wildcard)",
                                            other.map_or("missing".to_owned(), |l| format!(
                                                "level {l}"
                                            ))
                                        ),
                                    ));
                                }
                            }
                        }
                        KafkaKeyType::JsonField => match &m.key.field {
                            Some(f)
                                if JSON_FIELD_LENGTH.contains(&f.chars().count())
                                    && JSON_FIELD.matches(f) =>
                            {
                                KeyRule::Field(f.clone())
                            }
                            _ => {
                                return Err(SpecError::new(
                                    format!("{at}.key.field"),
                                    "type jsonField needs a field path such as `sensor_id` or `device.id` (no empty segment)",
                                ));
                            }
                        },
                    };
                    table.mqtt_to_kafka.push(MqttRoute {
                        name: route.name.clone(),
                        filter,
                        qos: m.qos,
                        kafka_topic,
                        key,
                        headers: m.headers,
                        dead_letter_topic: route.dead_letter_topic.clone(),
                    });
                }
                (None, Some(k)) => {
                    let at = format!("{at}.kafkaToMqtt");
                    if !KAFKA_TOPICS_PER_ROUTE.contains(&k.kafka_topics.len()) {
                        return Err(SpecError::new(
                            format!("{at}.kafkaTopics"),
                            format!(
                                "must name {} to {} topics",
                                KAFKA_TOPICS_PER_ROUTE.start(),
                                KAFKA_TOPICS_PER_ROUTE.end()
                            ),
                        ));
                    }
                    for (j, t) in k.kafka_topics.iter().enumerate() {
                        check_kafka_topic(&format!("{at}.kafkaTopics[{j}]"), t)?;
                    }
                    check_qos(k.qos, &at)?;
                    let field = format!("{at}.mqttTopic");
                    check_length(&field, &k.mqtt_topic, &MQTT_TOPIC_TEMPLATE_LENGTH)?;
                    if !MQTT_TOPIC_TEMPLATE.matches(&k.mqtt_topic) {
                        return Err(SpecError::new(
                            field,
                            "no `+`, `#` or NUL, and placeholders are `{key}` or a JSON field path such as `{device.id}`",
                        ));
                    }
                    let mqtt_topic = MqttTopicTemplate::parse(&k.mqtt_topic)
                        .map_err(|e| SpecError::new(field, e))?;
                    table.kafka_to_mqtt.push(KafkaRoute {
                        name: route.name.clone(),
                        kafka_topics: k.kafka_topics.clone(),
                        mqtt_topic,
                        qos: k.qos,
                        retain: k.retain,
                        dead_letter_topic: route.dead_letter_topic.clone(),
                    });
                }
                _ => {
                    return Err(SpecError::new(
                        at,
                        "needs exactly one of mqttToKafka or kafkaToMqtt",
                    ));
                }
            }
        }
        Ok(table)
    }

    /// MQTT subscriptions to make: filter → highest QoS asked by any route.
    pub fn subscriptions(&self) -> BTreeMap<String, u8> {
        let mut subs = BTreeMap::new();
        for r in &self.mqtt_to_kafka {
            let q = subs.entry(r.filter.as_str().to_owned()).or_insert(0);
            *q = (*q).max(r.qos);
        }
        subs
    }

    /// Kafka topics consumed by Kafka→MQTT routes.
    pub fn consumed_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self
            .kafka_to_mqtt
            .iter()
            .flat_map(|r| r.kafka_topics.iter().cloned())
            .collect();
        topics.sort();
        topics.dedup();
        topics
    }

    /// Decides, for every MQTT→Kafka route whose filter matches, what
    /// becomes of the message. Index is into [`RouteTable::mqtt_to_kafka`].
    ///
    /// `own` marks a message this bridge published itself: it is dropped
    /// (reason `own_message`) where its Kafka topic would feed this bridge's
    /// Kafka→MQTT routes and so come straight back round; elsewhere it is
    /// carried like any other.
    pub fn plan_mqtt(
        &self,
        msg: &MqttMessage<'_>,
        own: bool,
    ) -> Vec<(usize, Disposition<RecordPlan>)> {
        let mut out = Vec::new();
        for (i, route) in self.mqtt_to_kafka.iter().enumerate() {
            let Some(captures) = route.filter.captures(msg.topic) else {
                continue;
            };
            let result = route.kafka_topic.resolve(&captures).and_then(|topic| {
                let key = match &route.key {
                    KeyRule::None => None,
                    KeyRule::MqttTopic => Some(msg.topic.as_bytes().to_vec()),
                    KeyRule::Level(n) => captures.get(n - 1).map(|c| c.as_bytes().to_vec()),
                    KeyRule::Field(path) => {
                        Some(json_field_text_in(msg.payload, path)?.into_bytes())
                    }
                };
                Ok((topic, key))
            });
            let disposition = match result {
                Ok((topic, key)) => {
                    let mut headers = Vec::new();
                    if route.headers {
                        headers.push(("mqtt.topic".to_owned(), msg.topic.as_bytes().to_vec()));
                        headers.push(("mqtt.qos".to_owned(), msg.qos.to_string().into_bytes()));
                        headers.push((
                            "mqtt.retain".to_owned(),
                            msg.retain.to_string().into_bytes(),
                        ));
                        if let Some(ct) = msg.content_type {
                            headers.push(("mqtt.content-type".to_owned(), ct.as_bytes().to_vec()));
                        }
                        for (k, v) in msg.user_properties {
                            headers.push((k.clone(), v.as_bytes().to_vec()));
                        }
                    }
                    if own && self.feeds_kafka_routes(&topic) {
                        Disposition::Drop {
                            reason: OWN_MESSAGE,
                        }
                    } else {
                        Disposition::Forward(RecordPlan {
                            topic,
                            key,
                            headers,
                        })
                    }
                }
                Err(why) => dead_letter(
                    &route.name,
                    route.dead_letter_topic.as_deref(),
                    &why,
                    msg.topic,
                ),
            };
            out.push((i, disposition));
        }
        out
    }

    /// Decides where a Kafka record goes, for every Kafka→MQTT route
    /// consuming its topic. Index is into [`RouteTable::kafka_to_mqtt`].
    ///
    /// `own` marks a record this bridge produced itself: it is dropped
    /// (reason `own_message`) where its MQTT topic matches one of this
    /// bridge's MQTT→Kafka filters and so would come straight back round;
    /// elsewhere (e.g. `sensors/+/temperature` → Kafka → `sensors/{sensor_id}`)
    /// it is carried like any other.
    pub fn plan_kafka(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        own: bool,
    ) -> Vec<(usize, Disposition<PublishPlan>)> {
        let mut out = Vec::new();
        for (i, route) in self.kafka_to_mqtt.iter().enumerate() {
            if !route.kafka_topics.iter().any(|t| t == topic) {
                continue;
            }
            let disposition = match route.mqtt_topic.resolve(key, payload) {
                Ok(mqtt_topic) if own && self.feeds_mqtt_routes(&mqtt_topic) => Disposition::Drop {
                    reason: OWN_MESSAGE,
                },
                Ok(mqtt_topic) => Disposition::Forward(PublishPlan {
                    topic: mqtt_topic,
                    qos: route.qos,
                    retain: route.retain,
                }),
                Err(why) => {
                    dead_letter(&route.name, route.dead_letter_topic.as_deref(), &why, topic)
                }
            };
            out.push((i, disposition));
        }
        out
    }
}

impl RouteTable {
    /// Whether a publish to `mqtt_topic` would be picked up by an MQTT→Kafka route.
    fn feeds_mqtt_routes(&self, mqtt_topic: &str) -> bool {
        self.mqtt_to_kafka
            .iter()
            .any(|r| r.filter.captures(mqtt_topic).is_some())
    }

    /// Whether a record in `kafka_topic` would be picked up by a Kafka→MQTT route.
    fn feeds_kafka_routes(&self, kafka_topic: &str) -> bool {
        self.kafka_to_mqtt
            .iter()
            .any(|r| r.kafka_topics.iter().any(|t| t == kafka_topic))
    }
}

/// Metric reason of a message this bridge published that would loop back.
pub const OWN_MESSAGE: &str = "own_message";

fn check_qos(qos: u8, at: &str) -> Result<(), SpecError> {
    if !QOS.contains(&qos) {
        return Err(SpecError::new(format!("{at}.qos"), "must be 0, 1 or 2"));
    }
    Ok(())
}

/// A fixed Kafka topic name (see [`crate::rules::KAFKA_TOPIC_PATTERN`]).
fn check_kafka_topic(field: &str, name: &str) -> Result<(), SpecError> {
    check_length(field, name, &KAFKA_TOPIC_LENGTH)?;
    if !KAFKA_TOPIC.matches(name) {
        return Err(SpecError::new(
            field,
            "may use only a-z A-Z 0-9 . _ - and must not be `.` or `..`",
        ));
    }
    Ok(())
}

fn dead_letter<T>(
    route: &str,
    topic: Option<&str>,
    why: &Unresolved,
    source_topic: &str,
) -> Disposition<T> {
    let reason = why.label();
    match topic {
        Some(dl) => Disposition::DeadLetter {
            record: RecordPlan {
                topic: dl.into(),
                key: None,
                headers: dead_letter_headers(route, reason, &why.to_string(), source_topic),
            },
            reason,
        },
        None => Disposition::Drop { reason },
    }
}

/// The headers of a dead-letter record: which route could not deliver the
/// message, why (the stable label and in words), and the topic it came from.
pub fn dead_letter_headers(
    route: &str,
    reason: &str,
    message: &str,
    source_topic: &str,
) -> Vec<(String, Vec<u8>)> {
    vec![
        (
            DEAD_LETTER_ROUTE_HEADER.to_owned(),
            route.as_bytes().to_vec(),
        ),
        (
            DEAD_LETTER_REASON_HEADER.to_owned(),
            reason.as_bytes().to_vec(),
        ),
        (
            DEAD_LETTER_MESSAGE_HEADER.to_owned(),
            message.as_bytes().to_vec(),
        ),
        (
            SOURCE_TOPIC_HEADER.to_owned(),
            source_topic.as_bytes().to_vec(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(yaml: &str) -> RouteTable {
        let routes: Vec<Route> = serde_yaml::from_str(yaml).unwrap();
        RouteTable::compile(&routes).unwrap()
    }

    fn msg<'a>(topic: &'a str, payload: &'a [u8]) -> MqttMessage<'a> {
        MqttMessage {
            topic,
            payload,
            qos: 1,
            retain: false,
            user_properties: &[],
            content_type: None,
        }
    }

    #[test]
    fn keys_and_topics() {
        let t = table(
            r#"
- name: by-level
  mqttToKafka: {mqttTopicFilter: "s/+/t", kafkaTopic: "s.{1}", key: {type: topicLevel, level: 1}, headers: false}
- name: by-topic
  mqttToKafka: {mqttTopicFilter: "s/#", kafkaTopic: "all", key: {type: mqttTopic}, headers: false}
- name: by-field
  mqttToKafka: {mqttTopicFilter: "s/+/t", kafkaTopic: "f", key: {type: jsonField, field: dev.id}, headers: false}
  deadLetterTopic: dl
"#,
        );
        let plans = t.plan_mqtt(&msg("s/a/t", br#"{"dev":{"id":"x1"}}"#), false);
        let forwards: Vec<_> = plans
            .iter()
            .map(|(i, d)| match d {
                Disposition::Forward(r) => (*i, r.topic.clone(), r.key.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            forwards,
            vec![
                (0, "s.a".into(), Some(b"a".to_vec())),
                (1, "all".into(), Some(b"s/a/t".to_vec())),
                (2, "f".into(), Some(b"x1".to_vec())),
            ]
        );
        let plans = t.plan_mqtt(&msg("s/a/t", b"not json"), false);
        match &plans[2].1 {
            Disposition::DeadLetter { record, reason } => {
                assert_eq!(*reason, "payload_not_json");
                assert_eq!(&*record.topic, "dl");
                assert!(
                    record
                        .headers
                        .iter()
                        .any(|(k, v)| k == DEAD_LETTER_REASON_HEADER && v == b"payload_not_json")
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(t.plan_mqtt(&msg("other", b""), false).is_empty());
    }

    #[test]
    fn unresolvable_without_dead_letter_is_dropped() {
        let t = table(
            r#"
- name: r
  mqttToKafka: {mqttTopicFilter: "s/#", kafkaTopic: "s.{1}"}
"#,
        );
        assert_eq!(
            t.plan_mqtt(&msg("s/a/b", b""), false),
            vec![(
                0,
                Disposition::Drop {
                    reason: "invalid_topic"
                }
            )]
        );
    }

    #[test]
    fn headers_carry_mqtt_metadata() {
        let t = table("- name: r\n  mqttToKafka: {mqttTopicFilter: a, kafkaTopic: k}\n");
        let props = vec![("unit".to_owned(), "C".to_owned())];
        let m = MqttMessage {
            topic: "a",
            payload: b"1",
            qos: 1,
            retain: true,
            user_properties: &props,
            content_type: Some("text/plain"),
        };
        let Disposition::Forward(r) = &t.plan_mqtt(&m, false)[0].1 else {
            panic!()
        };
        let h: BTreeMap<_, _> = r.headers.iter().cloned().collect();
        assert_eq!(h["mqtt.topic"], b"a");
        assert_eq!(h["mqtt.qos"], b"1");
        assert_eq!(h["mqtt.retain"], b"true");
        assert_eq!(h["mqtt.content-type"], b"text/plain");
        assert_eq!(h["unit"], b"C");
        assert_eq!(r.key, None);
    }

    #[test]
    fn kafka_to_mqtt_plans() {
        let t = table(
            r#"
- name: k
  kafkaToMqtt: {kafkaTopics: [cmd], mqttTopic: "dev/{key}/{sensor_id}", qos: 2, retain: true}
  deadLetterTopic: dl
- name: fixed
  kafkaToMqtt: {kafkaTopics: [cmd, other], mqttTopic: "all"}
"#,
        );
        assert_eq!(
            t.consumed_topics(),
            vec!["cmd".to_owned(), "other".to_owned()]
        );
        let plans = t.plan_kafka("cmd", Some(b"k1"), br#"{"sensor_id": 5}"#, false);
        assert_eq!(
            plans,
            vec![
                (
                    0,
                    Disposition::Forward(PublishPlan {
                        topic: "dev/k1/5".into(),
                        qos: 2,
                        retain: true
                    })
                ),
                (
                    1,
                    Disposition::Forward(PublishPlan {
                        topic: "all".into(),
                        qos: 1,
                        retain: false
                    })
                ),
            ]
        );
        let plans = t.plan_kafka("cmd", None, br#"{"sensor_id": 5}"#, false);
        assert!(matches!(
            &plans[0].1,
            Disposition::DeadLetter {
                reason: "missing_key",
                ..
            }
        ));
        assert_eq!(t.plan_kafka("other", None, b"x", false).len(), 1);
    }

    /// The sensor fleet: readings into Kafka and back out on other MQTT topics.
    /// The bridge's own records go back out; only what would come straight
    /// back round (a real loop) is dropped, in either direction.
    #[test]
    fn own_messages_are_dropped_only_where_they_would_loop() {
        let t = table(
            r#"
- name: in
  mqttToKafka: {mqttTopicFilter: "sensors/+/temperature", kafkaTopic: sensor_data}
- name: out
  kafkaToMqtt: {kafkaTopics: [sensor_data], mqttTopic: "sensors/{sensor_id}"}
- name: echo
  kafkaToMqtt: {kafkaTopics: [sensor_data], mqttTopic: "sensors/{sensor_id}/temperature"}
"#,
        );
        let reading = br#"{"sensor_id": "s7", "temperature": 21.5}"#;
        let own = t.plan_kafka("sensor_data", None, reading, true);
        assert_eq!(
            own[0].1,
            Disposition::Forward(PublishPlan {
                topic: "sensors/s7".into(),
                qos: 1,
                retain: false
            })
        );
        assert_eq!(
            own[1].1,
            Disposition::Drop {
                reason: OWN_MESSAGE
            }
        );
        // Records of other producers go everywhere.
        let foreign = t.plan_kafka("sensor_data", None, reading, false);
        assert!(
            foreign
                .iter()
                .all(|(_, d)| matches!(d, Disposition::Forward(_)))
        );
        // An own MQTT message whose Kafka topic feeds a Kafka→MQTT route loops.
        let plans = t.plan_mqtt(&msg("sensors/s7/temperature", reading), true);
        assert_eq!(
            plans[0].1,
            Disposition::Drop {
                reason: OWN_MESSAGE
            }
        );
        let plans = t.plan_mqtt(&msg("sensors/s7/temperature", reading), false);
        assert!(matches!(plans[0].1, Disposition::Forward(_)));
    }

    #[test]
    fn subscriptions_take_the_highest_qos() {
        let t = table(
            r#"
- name: a
  mqttToKafka: {mqttTopicFilter: "x/#", kafkaTopic: k, qos: 0}
- name: b
  mqttToKafka: {mqttTopicFilter: "x/#", kafkaTopic: k2, qos: 2}
"#,
        );
        assert_eq!(
            t.subscriptions().into_iter().collect::<Vec<_>>(),
            vec![("x/#".to_owned(), 2)]
        );
    }
}
