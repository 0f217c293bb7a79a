//! Loss, duplicate, reordering and latency accounting, independent of where
//! the readings come from (Kafka or MQTT), so it can be unit-tested.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

/// What a simulator sent: per sensor id, the number of readings (seqs `0..n`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Expected {
    pub per_sensor: BTreeMap<String, u64>,
}

impl Expected {
    pub fn total(&self) -> u64 {
        self.per_sensor.values().sum()
    }

    /// Adds `other` (another connection's or run's readings) to this one.
    pub fn merge(&mut self, other: &Expected) {
        for (id, n) in &other.per_sensor {
            let e = self.per_sensor.entry(id.clone()).or_default();
            *e = (*e).max(*n);
        }
    }
}

/// What was seen of one sensor.
#[derive(Debug, Default)]
struct SensorSeen {
    /// One bit per seq: seen or not (duplicates are detected against it).
    bits: Vec<u64>,
    /// Highest seq seen so far (reordering: a new seq below it).
    max_seq: Option<u64>,
    unique: u64,
    /// Partitions (Kafka) this sensor's records were found in.
    partitions: BTreeSet<i32>,
}

impl SensorSeen {
    /// Marks `seq` seen; returns false if it had been seen before.
    fn mark(&mut self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        let fresh = self.bits[word] & (1 << bit) == 0;
        self.bits[word] |= 1 << bit;
        fresh
    }

    fn has(&self, seq: u64) -> bool {
        let word = (seq / 64) as usize;
        word < self.bits.len() && self.bits[word] & (1 << (seq % 64)) != 0
    }
}

/// Accumulates readings as they arrive.
#[derive(Debug, Default)]
pub struct Tracker {
    sensors: HashMap<String, SensorSeen>,
    /// End-to-end latency of each first delivery, in microseconds.
    latencies_us: Vec<u64>,
    received: u64,
    duplicates: u64,
    reordered: u64,
    malformed: u64,
    first_us: Option<u64>,
    last_us: Option<u64>,
    partitions: BTreeSet<i32>,
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one reading received at `now_us` (Unix micros), from Kafka
    /// partition `partition` if any.
    pub fn record(
        &mut self,
        sensor_id: &str,
        seq: u64,
        sent_us: u64,
        now_us: u64,
        partition: Option<i32>,
    ) {
        self.received += 1;
        self.first_us.get_or_insert(now_us);
        self.last_us = Some(now_us);
        let s = match self.sensors.get_mut(sensor_id) {
            Some(s) => s,
            None => self.sensors.entry(sensor_id.to_owned()).or_default(),
        };
        if let Some(p) = partition {
            s.partitions.insert(p);
            self.partitions.insert(p);
        }
        if !s.mark(seq) {
            self.duplicates += 1;
            return;
        }
        s.unique += 1;
        match s.max_seq {
            Some(max) if seq < max => self.reordered += 1,
            _ => s.max_seq = Some(seq),
        }
        self.latencies_us.push(now_us.saturating_sub(sent_us));
    }

    /// Records a payload that is not a reading.
    pub fn record_malformed(&mut self) {
        self.received += 1;
        self.malformed += 1;
    }

    /// Readings received, duplicates included.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Distinct (sensor, seq) pairs received.
    pub fn unique(&self) -> u64 {
        self.received - self.duplicates - self.malformed
    }

    /// The figures. With `expected`, loss is every expected (sensor, seq) not
    /// seen; without, only the gaps below each sensor's highest seq seen.
    pub fn report(&self, expected: Option<&Expected>) -> Report {
        let mut missing = 0u64;
        let mut missing_sample = Vec::new();
        let mut note = |id: &str, seq: u64, missing: &mut u64| {
            *missing += 1;
            if missing_sample.len() < 20 {
                missing_sample.push((id.to_owned(), seq));
            }
        };
        let mut unexpected = 0u64;
        match expected {
            Some(exp) => {
                for (id, &n) in &exp.per_sensor {
                    let seen = self.sensors.get(id.as_str());
                    for seq in 0..n {
                        if !seen.is_some_and(|s| s.has(seq)) {
                            note(id, seq, &mut missing);
                        }
                    }
                }
                for (id, s) in &self.sensors {
                    let n = exp.per_sensor.get(id).copied().unwrap_or(0);
                    let beyond = s.max_seq.map_or(0, |m| (m + 1).saturating_sub(n));
                    if beyond > 0 {
                        // Count only seqs actually seen at or beyond n.
                        unexpected +=
                            (n..=s.max_seq.unwrap_or(0)).filter(|&q| s.has(q)).count() as u64;
                    }
                }
            }
            None => {
                let mut ids: Vec<_> = self.sensors.keys().collect();
                ids.sort();
                for id in ids {
                    let s = &self.sensors[id];
                    for seq in 0..s.max_seq.map_or(0, |m| m + 1) {
                        if !s.has(seq) {
                            note(id, seq, &mut missing);
                        }
                    }
                }
            }
        }
        let mut lat = self.latencies_us.clone();
        lat.sort_unstable();
        let elapsed_s = match (self.first_us, self.last_us) {
            (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e6,
            _ => 0.0,
        };
        Report {
            received: self.received,
            unique: self.unique(),
            expected: expected.map(Expected::total),
            missing,
            missing_sample,
            unexpected,
            duplicates: self.duplicates,
            reordered: self.reordered,
            malformed: self.malformed,
            sensors_seen: self.sensors.len() as u64,
            partitions: self.partitions.iter().copied().collect(),
            keys_on_several_partitions: self
                .sensors
                .values()
                .filter(|s| s.partitions.len() > 1)
                .count() as u64,
            elapsed_s,
            throughput_per_s: if elapsed_s > 0.0 {
                self.unique() as f64 / elapsed_s
            } else {
                0.0
            },
            latency_ms: LatencyMs::from_sorted_us(&lat),
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyMs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl LatencyMs {
    pub fn from_sorted_us(sorted: &[u64]) -> Self {
        let ms = |p: f64| percentile(sorted, p).map_or(0.0, |v| v as f64 / 1000.0);
        Self {
            p50: ms(50.0),
            p90: ms(90.0),
            p99: ms(99.0),
            p999: ms(99.9),
            max: sorted.last().map_or(0.0, |&v| v as f64 / 1000.0),
        }
    }
}

/// Nearest-rank percentile `p` (0–100) of an ascending slice; `None` if empty.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// What a verifier found.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Messages received, duplicates and malformed included.
    pub received: u64,
    /// Distinct (sensor_id, seq) pairs.
    pub unique: u64,
    pub expected: Option<u64>,
    /// Expected (sensor_id, seq) pairs never received.
    pub missing: u64,
    /// Up to 20 of them.
    pub missing_sample: Vec<(String, u64)>,
    /// Received pairs the expectation does not contain (another run's data).
    pub unexpected: u64,
    pub duplicates: u64,
    /// New readings that arrived after a higher seq of the same sensor.
    pub reordered: u64,
    pub malformed: u64,
    pub sensors_seen: u64,
    /// Kafka partitions records came from.
    pub partitions: Vec<i32>,
    /// Sensors whose records were found in more than one partition (breaks per-key order).
    pub keys_on_several_partitions: u64,
    /// From the first to the last message received.
    pub elapsed_s: f64,
    pub throughput_per_s: f64,
    pub latency_ms: LatencyMs,
}

impl Report {
    /// True when nothing expected is missing.
    pub fn lossless(&self) -> bool {
        self.missing == 0
    }

    /// A few lines for people.
    pub fn summary(&self) -> String {
        format!(
            "received {} (unique {}, expected {}), missing {}, duplicates {}, reordered {}, malformed {}, \
             sensors {}, partitions {:?}{}, {:.0} msg/s over {:.1}s, latency ms p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
            self.received,
            self.unique,
            self.expected.map_or("?".into(), |e| e.to_string()),
            self.missing,
            self.duplicates,
            self.reordered,
            self.malformed,
            self.sensors_seen,
            self.partitions,
            if self.keys_on_several_partitions > 0 {
                format!(
                    " ({} keys on several partitions)",
                    self.keys_on_several_partitions
                )
            } else {
                String::new()
            },
            self.throughput_per_s,
            self.elapsed_s,
            self.latency_ms.p50,
            self.latency_ms.p99,
            self.latency_ms.p999,
            self.latency_ms.max,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(pairs: &[(&str, u64)]) -> Expected {
        Expected {
            per_sensor: pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 99.9), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
        let l = LatencyMs::from_sorted_us(&[1000, 2000, 3000, 4000]);
        assert_eq!(l.p50, 2.0);
        assert_eq!(l.max, 4.0);
    }

    #[test]
    fn clean_run_has_no_loss_dups_or_reordering() {
        let mut t = Tracker::new();
        for seq in 0..3 {
            for id in ["a", "b"] {
                t.record(id, seq, 1_000, 3_000, Some(if id == "a" { 0 } else { 1 }));
            }
        }
        let r = t.report(Some(&expected(&[("a", 3), ("b", 3)])));
        assert_eq!(
            (r.received, r.unique, r.missing, r.duplicates, r.reordered),
            (6, 6, 0, 0, 0)
        );
        assert_eq!(r.partitions, vec![0, 1]);
        assert_eq!(r.keys_on_several_partitions, 0);
        assert_eq!(r.latency_ms.p99, 2.0);
        assert!(r.lossless());
    }

    #[test]
    fn loss_duplicates_and_reordering_are_counted() {
        let mut t = Tracker::new();
        // a: 0, 2, 1, 2 (dup) — reordered once, one duplicate; 3 missing at the tail.
        for seq in [0, 2, 1, 2] {
            t.record("a", seq, 0, 10, Some(0));
        }
        // b never arrives; c lands on two partitions.
        t.record("c", 0, 0, 10, Some(0));
        t.record("c", 1, 0, 10, Some(3));
        let r = t.report(Some(&expected(&[("a", 4), ("b", 2), ("c", 2)])));
        assert_eq!(r.received, 6);
        assert_eq!(r.unique, 5);
        assert_eq!(r.duplicates, 1);
        assert_eq!(r.reordered, 1);
        assert_eq!(r.missing, 3); // a/3, b/0, b/1
        assert_eq!(
            r.missing_sample,
            vec![("a".into(), 3), ("b".into(), 0), ("b".into(), 1)]
        );
        assert_eq!(r.keys_on_several_partitions, 1);
        assert!(!r.lossless());
    }

    #[test]
    fn without_expectation_only_gaps_count() {
        let mut t = Tracker::new();
        for seq in [0, 1, 4] {
            t.record("a", seq, 0, 0, None);
        }
        t.record_malformed();
        let r = t.report(None);
        assert_eq!(r.missing, 2);
        assert_eq!(r.malformed, 1);
        assert_eq!(r.unique, 3);
        assert!(r.partitions.is_empty());
    }

    #[test]
    fn readings_beyond_the_expectation_are_unexpected() {
        let mut t = Tracker::new();
        for seq in 0..5 {
            t.record("a", seq, 0, 0, None);
        }
        let r = t.report(Some(&expected(&[("a", 3)])));
        assert_eq!((r.missing, r.unexpected), (0, 2));
    }

    #[test]
    fn throughput_from_first_to_last_arrival() {
        let mut t = Tracker::new();
        for seq in 0..11 {
            t.record("a", seq, 0, 1_000_000 + seq * 100_000, None);
        }
        let r = t.report(None);
        assert!((r.elapsed_s - 1.0).abs() < 1e-9);
        assert!((r.throughput_per_s - 11.0).abs() < 1e-9);
    }

    #[test]
    fn expectations_merge_by_maximum() {
        let mut a = expected(&[("a", 3)]);
        a.merge(&expected(&[("a", 2), ("b", 4)]));
        assert_eq!(a.total(), 7);
    }
}
