//! One field of a JSON payload, read without building the whole document.
//!
//! A `jsonField` key and a `{field}` of a Kafka→MQTT topic template are read
//! from every message; parsing each payload into a `serde_json::Value` tree
//! only to read one string cost more of the bridge's CPU than the Kafka
//! produce call. This walks the document once,
//! keeps only the value at the path, and skips everything else — with the
//! same answers as [`json_field_text`](crate::topic::json_field_text) on the
//! parsed document (the whole payload is still checked to be JSON).

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::topic::Unresolved;

/// The text of the field at the dotted `path` of a JSON `payload`: strings
/// as they are, other values as JSON; null or absent is missing.
pub fn json_field_text_in(payload: &[u8], path: &str) -> Result<String, Unresolved> {
    let segments: Vec<&str> = path.split('.').collect();
    let mut de = serde_json::Deserializer::from_slice(payload);
    let found = AtPath(&segments)
        .deserialize(&mut de)
        .and_then(|found| de.end().map(|()| found))
        .map_err(|_| Unresolved::PayloadNotJson)?;
    match found {
        None | Some(Value::Null) => Err(Unresolved::MissingField(path.to_owned())),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Ok(other.to_string()),
    }
}

/// Deserializes the value at the remaining path, `None` if it is not there.
struct AtPath<'a>(&'a [&'a str]);

impl<'de> DeserializeSeed<'de> for AtPath<'_> {
    type Value = Option<Value>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        match self.0.split_first() {
            None => Value::deserialize(d).map(Some),
            Some((segment, rest)) => d.deserialize_any(Step { segment, rest }),
        }
    }
}

/// One level down: the member `segment` of an object, or the element at
/// that index of an array; anything else has no such field.
struct Step<'a> {
    segment: &'a str,
    rest: &'a [&'a str],
}

impl<'de> Visitor<'de> for Step<'_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // Like serde_json's own map, a repeated key's last value counts.
        let mut found = None;
        while let Some(matches) = map.next_key_seed(KeyIs(self.segment))? {
            if matches {
                found = map.next_value_seed(AtPath(self.rest))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let index = self.segment.parse::<usize>().ok();
        let mut found = None;
        let mut i = 0usize;
        loop {
            if index == Some(i) {
                match seq.next_element_seed(AtPath(self.rest))? {
                    Some(value) => found = value,
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            i += 1;
        }
        Ok(found)
    }
}

/// Whether an object key equals the wanted one, without allocating it.
struct KeyIs<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::json_field_text;

    /// The same answer as parsing the whole payload and looking the field up.
    fn same_as_full_parse(payload: &str, path: &str) {
        let full = match serde_json::from_str::<Value>(payload) {
            Ok(v) => json_field_text(&v, path),
            Err(_) => Err(Unresolved::PayloadNotJson),
        };
        assert_eq!(
            json_field_text_in(payload.as_bytes(), path),
            full,
            "{payload} at {path}"
        );
    }

    #[test]
    fn answers_like_the_parsed_document() {
        let doc = r#"{"s": "x", "n": 1.5, "i": -3, "big": 18446744073709551615, "b": true,
            "o": {"a": [1, {"deep": "y"}, null]}, "z": null, "esc\"aped": "q\n",
            "arr": [[0, 1], [2, 3]], "s2": "x", "s2": {"k": "last wins"}}"#;
        for path in [
            "s",
            "n",
            "i",
            "big",
            "b",
            "o",
            "o.a",
            "o.a.0",
            "o.a.1.deep",
            "o.a.2",
            "o.a.3",
            "o.a.x",
            "z",
            "esc\"aped",
            "arr.1.0",
            "s2",
            "s2.k",
            "missing",
            "s.x",
            "n.0",
            "",
        ] {
            same_as_full_parse(doc, path);
        }
    }

    #[test]
    fn reference_fleet_payload() {
        let payload =
            br#"{"sensor_id":"sensor-0042","temperature":21.37,"timestamp":1763766000123456,"seq":7}"#;
        assert_eq!(
            json_field_text_in(payload, "sensor_id").unwrap(),
            "sensor-0042"
        );
        assert_eq!(json_field_text_in(payload, "seq").unwrap(), "7");
    }

    #[test]
    fn not_json_anywhere_is_not_json() {
        for payload in [
            "",
            "not json",
            r#"{"s": "x""#,
            r#"{"s": "x"} trailing"#,
            r#"{"s": "x", "later": tru}"#,
            r#"{"s": 01}"#,
        ] {
            same_as_full_parse(payload, "s");
            assert_eq!(
                json_field_text_in(payload.as_bytes(), "s"),
                Err(Unresolved::PayloadNotJson),
                "{payload}"
            );
        }
    }

    #[test]
    fn scalars_and_arrays_at_the_top() {
        same_as_full_parse("42", "x");
        same_as_full_parse(r#""text""#, "0");
        same_as_full_parse(r#"["a", "b"]"#, "1");
        same_as_full_parse("null", "x");
    }
}
