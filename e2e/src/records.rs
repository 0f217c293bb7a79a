//! Reads a Kafka topic back from the beginning with keys and partitions:
//! the sensor-fleet verifier accounts for loss and duplicates from the
//! payloads, this also checks what the bridge chose as key.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sensor_fleet::{Expected, Tracker, payload};

/// What was in the topic.
#[derive(Debug, Default)]
pub struct Records {
    pub tracker: Tracker,
    /// Records whose key is not the payload's `sensor_id`.
    pub wrong_keys: Vec<(Option<String>, String)>,
    /// Distinct (sensor id) per partition.
    pub partitions: BTreeMap<i32, BTreeSet<String>>,
    /// Records per sensor-id prefix (`<prefix>-<n>`).
    pub per_prefix: BTreeMap<String, u64>,
}

impl Records {
    /// Sensors whose records are on more than one partition.
    pub fn keys_on_several_partitions(&self) -> usize {
        let mut seen: BTreeMap<&str, BTreeSet<i32>> = BTreeMap::new();
        for (p, ids) in &self.partitions {
            for id in ids {
                seen.entry(id).or_default().insert(*p);
            }
        }
        seen.values().filter(|p| p.len() > 1).count()
    }
}

/// Consumes `topic` from the beginning until every reading of `expected`
/// (with `prefix` sensor ids) is there, then for `settle` more (to catch
/// anything that should not be there), or until `timeout`.
pub async fn read(
    endpoint: &sensor_fleet::KafkaEndpoint,
    topic: &str,
    expected: &Expected,
    settle: Duration,
    timeout: Duration,
) -> Result<Records> {
    let consumer: BaseConsumer = endpoint
        .client_config()
        .set("group.id", format!("e2e-check-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .context("create Kafka consumer")?;
    let topic = topic.to_owned();
    let expected = expected.clone();
    tokio::task::spawn_blocking(move || -> Result<Records> {
        let deadline = Instant::now() + timeout;
        // Kafka may be coming back from a restart: retry metadata until the deadline.
        let parts = loop {
            match consumer.fetch_metadata(Some(&topic), Duration::from_secs(10)) {
                Ok(md) => {
                    let parts: Vec<i32> = md
                        .topics()
                        .iter()
                        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                        .collect();
                    if !parts.is_empty() {
                        break parts;
                    }
                }
                Err(e) if Instant::now() > deadline => bail!("metadata of {topic}: {e}"),
                Err(_) => {}
            }
            if Instant::now() > deadline {
                bail!("Kafka topic {topic} has no partitions");
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        let mut tpl = TopicPartitionList::new();
        for p in parts {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let mut r = Records::default();
        let mut complete_at: Option<Instant> = None;
        let mut last_check = Instant::now();
        loop {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                let now = payload::now_micros();
                let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
                match m.payload().and_then(payload::decode) {
                    Some(reading) => {
                        let id = reading.sensor_id.to_string();
                        if key.as_deref() != Some(id.as_str()) {
                            r.wrong_keys.push((key, id.clone()));
                        }
                        r.partitions
                            .entry(m.partition())
                            .or_default()
                            .insert(id.clone());
                        let prefix = id.rsplit_once('-').map_or(id.as_str(), |p| p.0);
                        *r.per_prefix.entry(prefix.to_owned()).or_default() += 1;
                        r.tracker.record(
                            &id,
                            reading.seq,
                            reading.timestamp,
                            now,
                            Some(m.partition()),
                        );
                    }
                    None => r.tracker.record_malformed(),
                }
            }
            // A full report per record would be quadratic: only when it can be complete.
            if complete_at.is_none()
                && r.tracker.unique() >= expected.total()
                && last_check.elapsed() > Duration::from_millis(500)
            {
                last_check = Instant::now();
                if r.tracker.report(Some(&expected)).missing == 0 {
                    complete_at = Some(Instant::now());
                }
            }
            if complete_at.is_some_and(|t| t.elapsed() >= settle) || Instant::now() > deadline {
                return Ok(r);
            }
        }
    })
    .await
    .context("consumer thread panicked")?
}
