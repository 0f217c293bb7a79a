//! MQTT topic filters and the topic/key templates of routes.
//!
//! Parsing happens once at configuration time so that a route that cannot
//! work is refused before any connection; resolving per message only fills
//! in values and reports a [`Unresolved`] reason when it cannot.

use std::fmt;

use crate::json_field::json_field_text_in;

/// A parsed MQTT topic filter (`+` one level, `#` the remaining levels).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicFilter {
    text: String,
    levels: Vec<FilterLevel>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum FilterLevel {
    Exact(String),
    Single,
    Multi,
}

impl TopicFilter {
    /// Parses a filter, saying what is wrong in terms a user understands.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("a topic filter must not be empty".into());
        }
        if text.len() > 65_535 {
            return Err("a topic filter must be at most 65535 bytes".into());
        }
        if text.contains('\0') {
            return Err("a topic filter must not contain NUL".into());
        }
        if text.starts_with("$share/") {
            return Err(
                "shared subscriptions are set with mqtt.sharedSubscriptionGroup, not in the filter"
                    .into(),
            );
        }
        let parts: Vec<&str> = text.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let level = match *part {
                "+" => FilterLevel::Single,
                "#" if i + 1 == parts.len() => FilterLevel::Multi,
                "#" => return Err("`#` is only allowed as the last level".into()),
                p if p.contains('+') || p.contains('#') => {
                    return Err(format!(
                        "level `{p}`: a wildcard (`+`, `#`) must take a whole level"
                    ));
                }
                p => FilterLevel::Exact(p.to_owned()),
            };
            levels.push(level);
        }
        Ok(Self {
            text: text.to_owned(),
            levels,
        })
    }

    /// Number of wildcards, i.e. the highest `{n}` a template may use.
    pub fn wildcard_count(&self) -> usize {
        self.levels
            .iter()
            .filter(|l| !matches!(l, FilterLevel::Exact(_)))
            .count()
    }

    /// The filter as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Matches a topic name; on success returns what each wildcard captured
    /// (`#` captures the remaining levels joined by `/`, possibly empty).
    pub fn captures<'t>(&self, topic: &'t str) -> Option<Vec<&'t str>> {
        // Topics starting with `$` are not matched by a leading wildcard (MQTT 4.7.2).
        if topic.starts_with('$') && !matches!(self.levels.first(), Some(FilterLevel::Exact(_))) {
            return None;
        }
        let mut captures = Vec::new();
        let mut rest = Some(topic);
        for level in &self.levels {
            match level {
                FilterLevel::Multi => {
                    captures.push(rest.unwrap_or(""));
                    return Some(captures);
                }
                FilterLevel::Single | FilterLevel::Exact(_) => {
                    let current = rest?;
                    let (head, tail) = match current.split_once('/') {
                        Some((h, t)) => (h, Some(t)),
                        None => (current, None),
                    };
                    if let FilterLevel::Exact(e) = level {
                        if e != head {
                            return None;
                        }
                    } else {
                        captures.push(head);
                    }
                    rest = tail;
                }
            }
        }
        rest.is_none().then_some(captures)
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why a message could not be mapped; the label of the dropped/dead-lettered
/// counters and the value of the dead-letter reason header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unresolved {
    /// The payload is not JSON but a template or key needs a field.
    PayloadNotJson,
    /// The JSON payload has no such field (or it is null).
    MissingField(String),
    /// The Kafka record has no key but the template uses `{key}`.
    MissingKey,
    /// The filled-in topic is not a valid topic name.
    InvalidTopic(String),
    /// A key or field value filled into an MQTT topic template contains `/`
    /// (it would add topic levels, so subscribers' filters would no longer
    /// match), `+`, `#` or NUL.
    ValueChangesTopicLevels(String),
}

impl Unresolved {
    /// Stable label value.
    pub fn label(&self) -> &'static str {
        match self {
            Self::PayloadNotJson => "payload_not_json",
            Self::MissingField(_) => "missing_field",
            Self::MissingKey => "missing_key",
            Self::InvalidTopic(_) => "invalid_topic",
            Self::ValueChangesTopicLevels(_) => "value_changes_topic_levels",
        }
    }
}

impl fmt::Display for Unresolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PayloadNotJson => f.write_str("payload is not JSON"),
            Self::MissingField(p) => write!(f, "payload has no field `{p}`"),
            Self::MissingKey => f.write_str("record has no key"),
            Self::InvalidTopic(t) => write!(f, "resulting topic `{t}` is not valid"),
            Self::ValueChangesTopicLevels(v) => write!(
                f,
                "value `{v}` would change the topic's levels (contains `/`, `+`, `#` or NUL)"
            ),
        }
    }
}

/// One piece of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// `{n}`: 1-based wildcard level.
    Level(usize),
    /// `{key}`: the Kafka record key.
    Key,
    /// `{a.b}`: a JSON payload field.
    Field(String),
}

/// Splits `a{x}b` into literal and placeholder pieces.
fn split_template(text: &str) -> Result<Vec<(bool, String)>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err(format!("unmatched `}}` in `{text}`"));
        }
        if open > 0 {
            out.push((false, rest[..open].to_owned()));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("unclosed `{{` in `{text}`"))?;
        let name = &after[..close];
        if name.is_empty() || name.contains('{') {
            return Err(format!("empty or nested placeholder in `{text}`"));
        }
        out.push((true, name.to_owned()));
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        out.push((false, rest.to_owned()));
    }
    Ok(out)
}

/// A Kafka topic template of an MQTT→Kafka route: `{n}` wildcard levels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaTopicTemplate {
    parts: Vec<Part>,
    /// The topic when the template has no placeholder: handed out shared,
    /// so a fixed route allocates nothing per message.
    fixed: Option<std::sync::Arc<str>>,
}

impl KafkaTopicTemplate {
    /// Parses and checks the template against the route's filter.
    pub fn parse(text: &str, filter: &TopicFilter) -> Result<Self, String> {
        let mut parts = Vec::new();
        for (placeholder, piece) in split_template(text)? {
            if !placeholder {
                if let Some(c) = piece.chars().find(|c| !is_kafka_topic_char(*c)) {
                    return Err(format!(
                        "`{c}` is not allowed in a Kafka topic (only a-z A-Z 0-9 . _ -)"
                    ));
                }
                parts.push(Part::Literal(piece));
                continue;
            }
            let level: usize = piece.parse().map_err(|_| {
                format!("`{{{piece}}}`: only wildcard levels `{{1}}`, `{{2}}`, … are allowed here")
            })?;
            let count = filter.wildcard_count();
            if level == 0 || level > count {
                return Err(format!(
                    "`{{{level}}}` refers to wildcard level {level} but the filter `{filter}` has {count} wildcard(s)"
                ));
            }
            parts.push(Part::Level(level));
        }
        if parts.is_empty() {
            return Err("must not be empty".into());
        }
        let mut fixed = None;
        if let [Part::Literal(l)] = parts.as_slice() {
            validate_kafka_topic(l)?;
            fixed = Some(std::sync::Arc::from(l.as_str()));
        }
        Ok(Self { parts, fixed })
    }

    /// Fills in the captured levels.
    pub fn resolve(&self, captures: &[&str]) -> Result<std::sync::Arc<str>, Unresolved> {
        // A fixed topic was checked when the configuration was loaded.
        if let Some(fixed) = &self.fixed {
            return Ok(fixed.clone());
        }
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Level(n) => out.push_str(captures.get(n - 1).copied().unwrap_or("")),
                Part::Key | Part::Field(_) => {}
            }
        }
        validate_kafka_topic(&out).map_err(|_| Unresolved::InvalidTopic(out.clone()))?;
        Ok(out.into())
    }
}

/// An MQTT topic template of a Kafka→MQTT route: `{key}` and JSON fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqttTopicTemplate {
    parts: Vec<Part>,
}

impl MqttTopicTemplate {
    /// Parses the template.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        for (placeholder, piece) in split_template(text)? {
            if !placeholder {
                if piece.contains(['+', '#', '\0']) {
                    return Err("an MQTT topic name must not contain `+`, `#` or NUL".into());
                }
                parts.push(Part::Literal(piece));
            } else if piece == "key" {
                parts.push(Part::Key);
            } else if piece.split('.').any(str::is_empty) {
                return Err(format!("`{{{piece}}}` is not a valid field path"));
            } else {
                parts.push(Part::Field(piece));
            }
        }
        if parts.is_empty() {
            return Err("must not be empty".into());
        }
        Ok(Self { parts })
    }

    /// Fills in the key and the payload's fields (read from the JSON payload
    /// only where the template names one).
    pub fn resolve(&self, key: Option<&[u8]>, payload: &[u8]) -> Result<String, Unresolved> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Key => {
                    let key = key.ok_or(Unresolved::MissingKey)?;
                    push_level_value(&mut out, &String::from_utf8_lossy(key))?;
                }
                Part::Field(path) => {
                    push_level_value(&mut out, &json_field_text_in(payload, path)?)?;
                }
                Part::Level(_) => {}
            }
        }
        if out.is_empty() || out.contains(['+', '#', '\0']) || out.len() > 65_535 {
            return Err(Unresolved::InvalidTopic(out));
        }
        Ok(out)
    }
}

/// Appends a key or field value to an MQTT topic, refusing one that would
/// add or change topic levels (`devices/{key}/commands` with key `a/b`).
fn push_level_value(out: &mut String, value: &str) -> Result<(), Unresolved> {
    if value.contains(['/', '+', '#', '\0']) {
        return Err(Unresolved::ValueChangesTopicLevels(value.to_owned()));
    }
    out.push_str(value);
    Ok(())
}

/// The text of a JSON field given by a dotted path: strings as they are,
/// other values as JSON. Null or absent counts as missing. The reference the
/// streaming [`json_field_text_in`] is tested against.
#[cfg(test)]
pub fn json_field_text(json: &serde_json::Value, path: &str) -> Result<String, Unresolved> {
    let mut value = json;
    for segment in path.split('.') {
        value = match value {
            serde_json::Value::Object(map) => map.get(segment),
            serde_json::Value::Array(items) => {
                segment.parse::<usize>().ok().and_then(|i| items.get(i))
            }
            _ => None,
        }
        .ok_or_else(|| Unresolved::MissingField(path.to_owned()))?;
    }
    match value {
        serde_json::Value::Null => Err(Unresolved::MissingField(path.to_owned())),
        serde_json::Value::String(s) => Ok(s.clone()),
        other => Ok(other.to_string()),
    }
}

fn is_kafka_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Kafka's own topic name rules.
pub fn validate_kafka_topic(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a Kafka topic name must not be empty".into());
    }
    if name == "." || name == ".." {
        return Err("a Kafka topic name must not be `.` or `..`".into());
    }
    if name.len() > 249 {
        return Err("a Kafka topic name must be at most 249 characters".into());
    }
    if let Some(c) = name.chars().find(|c| !is_kafka_topic_char(*c)) {
        return Err(format!(
            "`{c}` is not allowed in a Kafka topic name (only a-z A-Z 0-9 . _ -)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::parse(s).unwrap()
    }

    #[test]
    fn filter_matching_and_captures() {
        assert_eq!(f("a/b").captures("a/b"), Some(vec![]));
        assert_eq!(f("a/b").captures("a/b/c"), None);
        assert_eq!(f("a/+/c").captures("a/x/c"), Some(vec!["x"]));
        assert_eq!(f("a/+/c").captures("a/x/d"), None);
        assert_eq!(f("a/+").captures("a/"), Some(vec![""]));
        assert_eq!(f("a/#").captures("a/x/y"), Some(vec!["x/y"]));
        assert_eq!(f("a/#").captures("a"), Some(vec![""]));
        assert_eq!(f("#").captures("x"), Some(vec!["x"]));
        assert_eq!(f("+/+/#").captures("a/b/c/d"), Some(vec!["a", "b", "c/d"]));
        assert_eq!(f("#").captures("$SYS/x"), None);
        assert_eq!(f("+/x").captures("$SYS/x"), None);
        assert_eq!(f("$SYS/#").captures("$SYS/x"), Some(vec!["x"]));
        assert_eq!(f("sensors/+/temperature").wildcard_count(), 1);
    }

    #[test]
    fn bad_filters_are_refused() {
        for bad in ["", "a/#/b", "a/b#", "a+/b", "$share/g/a"] {
            assert!(TopicFilter::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kafka_topic_template() {
        let filter = f("sensors/+/+/x");
        let t = KafkaTopicTemplate::parse("sensors.{1}.{2}", &filter).unwrap();
        assert_eq!(&*t.resolve(&["a", "b"]).unwrap(), "sensors.a.b");
        assert!(matches!(
            t.resolve(&["a/b", "c"]),
            Err(Unresolved::InvalidTopic(_))
        ));
        let err = KafkaTopicTemplate::parse("s.{3}", &filter).unwrap_err();
        assert!(err.contains("wildcard level 3"), "{err}");
        assert!(KafkaTopicTemplate::parse("s.{0}", &filter).is_err());
        assert!(KafkaTopicTemplate::parse("s.{x}", &filter).is_err());
        assert!(KafkaTopicTemplate::parse("s/{1}", &filter).is_err());
        assert!(KafkaTopicTemplate::parse("s.{1", &filter).is_err());
        assert!(KafkaTopicTemplate::parse("s.1}", &filter).is_err());
        assert!(KafkaTopicTemplate::parse("", &filter).is_err());
    }

    #[test]
    fn mqtt_topic_template() {
        let t = MqttTopicTemplate::parse("sensors/{device.id}/{key}").unwrap();
        let json = br#"{"device": {"id": 7}}"#;
        assert_eq!(t.resolve(Some(b"k"), json).unwrap(), "sensors/7/k");
        assert_eq!(t.resolve(None, json), Err(Unresolved::MissingKey));
        assert_eq!(
            t.resolve(Some(b"k"), b"not json"),
            Err(Unresolved::PayloadNotJson)
        );
        let missing = br#"{"device": {}}"#;
        assert_eq!(
            t.resolve(Some(b"k"), missing),
            Err(Unresolved::MissingField("device.id".into()))
        );
        // A key or field must not add levels: subscribers of `sensors/+/+`
        // would never see `sensors/7/a/b`.
        for bad in ["a/b", "+", "a#", "x\0"] {
            assert_eq!(
                t.resolve(Some(bad.as_bytes()), json),
                Err(Unresolved::ValueChangesTopicLevels(bad.into())),
                "{bad}"
            );
        }
        assert_eq!(
            t.resolve(Some(b"k"), br#"{"device": {"id": "x/y"}}"#),
            Err(Unresolved::ValueChangesTopicLevels("x/y".into()))
        );
        let wild = br#"{"device": {"id": "+"}}"#;
        assert!(matches!(
            t.resolve(Some(b"k"), wild),
            Err(Unresolved::ValueChangesTopicLevels(_))
        ));
        assert!(MqttTopicTemplate::parse("a/+/b").is_err());
        assert!(MqttTopicTemplate::parse("a/{}/b").is_err());
        assert!(MqttTopicTemplate::parse("a/{x..y}").is_err());
        // A template without fields does not need a JSON payload.
        assert_eq!(
            MqttTopicTemplate::parse("fixed/topic")
                .unwrap()
                .resolve(None, b"not json")
                .unwrap(),
            "fixed/topic"
        );
    }

    #[test]
    fn json_fields() {
        let v = serde_json::json!({"s": "x", "n": 1.5, "b": true, "o": {"a": [1, 2]}, "z": null});
        assert_eq!(json_field_text(&v, "s").unwrap(), "x");
        assert_eq!(json_field_text(&v, "n").unwrap(), "1.5");
        assert_eq!(json_field_text(&v, "b").unwrap(), "true");
        assert_eq!(json_field_text(&v, "o.a.1").unwrap(), "2");
        assert!(json_field_text(&v, "z").is_err());
        assert!(json_field_text(&v, "s.x").is_err());
    }
}
