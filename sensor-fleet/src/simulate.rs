//! The sensor fleet: N sensors at R Hz, published to MQTT over several
//! pipelined connections, or produced straight to Kafka.
//!
//! Pacing is by schedule, not by sleeping per message: message `m` of a
//! connection is due at `m / rate`, and every wake-up publishes all that are
//! due. A slow broker shows up as lag behind the schedule, never as a silently
//! lower rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::accounting::Expected;
use crate::conn::{KafkaEndpoint, MqttEndpoint};
use crate::payload;

/// Which sensors exist and how often they report.
#[derive(Clone, Debug)]
pub struct Fleet {
    pub sensors: usize,
    pub rate_hz: f64,
    pub duration: Duration,
    /// Sensor ids are `<id_prefix>-<index, 6 digits>`.
    pub id_prefix: String,
    /// MQTT topic (or Kafka key for Kafka); `{id}` is the sensor id.
    pub topic_template: String,
}

impl Fleet {
    pub fn new(sensors: usize, rate_hz: f64, duration: Duration) -> Self {
        Self {
            sensors,
            rate_hz,
            duration,
            id_prefix: "sensor".into(),
            topic_template: "sensors/{id}/temperature".into(),
        }
    }

    /// Readings each sensor sends over the whole run.
    pub fn rounds(&self) -> u64 {
        (self.duration.as_secs_f64() * self.rate_hz)
            .round()
            .max(1.0) as u64
    }

    /// The sensors of connection `c` out of `n`: every n-th one.
    pub fn sensors_of(&self, c: usize, n: usize) -> Vec<usize> {
        (c..self.sensors).step_by(n.max(1)).collect()
    }
}

/// The publication schedule of one connection: message `m` goes to sensor
/// `m % sensors` with seq `m / sensors`, due `m / rate` seconds after start.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub sensors: u64,
    /// Messages per second over all of this connection's sensors.
    pub rate: f64,
    pub total: u64,
}

impl Schedule {
    pub fn new(sensors: usize, rate_hz: f64, rounds: u64) -> Self {
        Self {
            sensors: sensors as u64,
            rate: sensors as f64 * rate_hz,
            total: sensors as u64 * rounds,
        }
    }

    /// When message `m` is due, after the start.
    pub fn due(&self, m: u64) -> Duration {
        Duration::from_secs_f64(m as f64 / self.rate)
    }

    /// How many messages are due `elapsed` after the start.
    pub fn due_count(&self, elapsed: Duration) -> u64 {
        ((elapsed.as_secs_f64() * self.rate).floor() as u64 + 1).min(self.total)
    }

    /// (local sensor index, seq) of message `m`.
    pub fn slot(&self, m: u64) -> (usize, u64) {
        ((m % self.sensors) as usize, m / self.sensors)
    }

    /// Readings sent per local sensor once the first `published` messages went out.
    pub fn per_sensor(&self, published: u64) -> Vec<u64> {
        (0..self.sensors)
            .map(|j| published / self.sensors + u64::from(j < published % self.sensors))
            .collect()
    }
}

/// Live counters, readable while a simulation runs.
#[derive(Debug, Default)]
pub struct SimCounters {
    /// Publishes handed to the client.
    pub published: AtomicU64,
    /// Acknowledged by the broker (QoS 1) or written to the socket (QoS 0).
    pub acked: AtomicU64,
    /// Connection errors seen (each is followed by a reconnect).
    pub errors: AtomicU64,
    /// Largest delay behind the schedule, in microseconds.
    pub max_lag_us: AtomicU64,
    /// When the last publish of the slowest connection went out, in
    /// microseconds after the start (the real sending period).
    pub send_end_us: AtomicU64,
    /// Set to end the run early.
    pub stop: AtomicBool,
}

/// The outcome of a simulation.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SimSummary {
    pub published: u64,
    pub acked: u64,
    pub errors: u64,
    pub elapsed_s: f64,
    pub offered_rate: f64,
    /// Publishes per second actually achieved over the sending period.
    pub achieved_rate: f64,
    pub max_lag_ms: f64,
    /// Readings per sensor, for the verifier.
    #[serde(skip)]
    pub expected: Expected,
}

impl SimSummary {
    pub fn line(&self) -> String {
        format!(
            "published {} acked {} errors {} in {:.1}s: offered {:.0}/s achieved {:.0}/s, max lag behind schedule {:.1} ms",
            self.published,
            self.acked,
            self.errors,
            self.elapsed_s,
            self.offered_rate,
            self.achieved_rate,
            self.max_lag_ms
        )
    }
}

/// MQTT publishing settings.
#[derive(Clone, Debug)]
pub struct MqttSim {
    pub fleet: Fleet,
    pub endpoint: MqttEndpoint,
    pub qos: u8,
    pub connections: usize,
    /// Unacknowledged QoS 1 publishes per connection (Mosquitto's default
    /// window is 20; a larger one only queues in the broker).
    pub inflight: u16,
    pub client_id_prefix: String,
    /// How long to wait for outstanding acknowledgements at the end.
    pub drain_timeout: Duration,
    /// Print progress to stderr this often.
    pub progress: Option<Duration>,
}

impl MqttSim {
    pub fn new(fleet: Fleet, endpoint: MqttEndpoint) -> Self {
        Self {
            fleet,
            endpoint,
            qos: 1,
            connections: 4,
            inflight: 20,
            client_id_prefix: format!("sensor-fleet-{}", std::process::id()),
            drain_timeout: Duration::from_secs(10),
            progress: None,
        }
    }
}

fn qos_v311(qos: u8) -> rumqttc::QoS {
    match qos {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

/// Runs the fleet against MQTT until its duration is over and every publish
/// is acknowledged (or `drain_timeout` passed).
pub async fn simulate_mqtt(cfg: &MqttSim) -> Result<SimSummary> {
    simulate_mqtt_with(cfg, Arc::new(SimCounters::default())).await
}

/// [`simulate_mqtt`] with counters the caller can watch (and `stop`).
pub async fn simulate_mqtt_with(cfg: &MqttSim, counters: Arc<SimCounters>) -> Result<SimSummary> {
    let conns = cfg.connections.clamp(1, cfg.fleet.sensors.max(1));
    let rounds = cfg.fleet.rounds();
    let start = Instant::now();
    let progress = cfg.progress.map(|every| {
        let c = counters.clone();
        tokio::spawn(progress_loop(c, every, start))
    });
    let mut tasks = Vec::new();
    for c in 0..conns {
        let sensors = cfg.fleet.sensors_of(c, conns);
        let ids: Vec<String> = sensors
            .iter()
            .map(|&i| payload::sensor_id(&cfg.fleet.id_prefix, i))
            .collect();
        let topics: Vec<String> = ids
            .iter()
            .map(|id| payload::topic(&cfg.fleet.topic_template, id))
            .collect();
        let schedule = Schedule::new(sensors.len(), cfg.fleet.rate_hz, rounds);
        let mut opts = cfg
            .endpoint
            .options_v311(&format!("{}-{c}", cfg.client_id_prefix))?;
        opts.set_inflight(cfg.inflight.max(1))
            .set_request_channel_capacity(cfg.inflight as usize * 4 + 64)
            .set_clean_session(true);
        let counters = counters.clone();
        let qos = cfg.qos;
        let drain = cfg.drain_timeout;
        tasks.push(tokio::spawn(async move {
            let published = connection(
                opts, qos, schedule, &sensors, &ids, &topics, start, drain, &counters,
            )
            .await;
            (ids, schedule.per_sensor(published))
        }));
    }
    let mut expected = Expected::default();
    for t in tasks {
        let (ids, counts) = t.await.context("publisher task panicked")?;
        for (id, n) in ids.into_iter().zip(counts) {
            expected.per_sensor.insert(id, n);
        }
    }
    if let Some(p) = progress {
        p.abort();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let published = counters.published.load(Ordering::Relaxed);
    Ok(SimSummary {
        published,
        acked: counters.acked.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
        elapsed_s: elapsed,
        offered_rate: cfg.fleet.sensors as f64 * cfg.fleet.rate_hz,
        achieved_rate: achieved(published, &counters),
        max_lag_ms: counters.max_lag_us.load(Ordering::Relaxed) as f64 / 1000.0,
        expected,
    })
}

/// Publishes per second over the real sending period (longer than the
/// nominal duration when the publisher fell behind).
fn achieved(published: u64, c: &SimCounters) -> f64 {
    let period = c.send_end_us.load(Ordering::Relaxed) as f64 / 1e6;
    if period > 0.0 {
        published as f64 / period
    } else {
        0.0
    }
}

async fn progress_loop(c: Arc<SimCounters>, every: Duration, start: Instant) {
    let mut last = (0u64, Instant::now());
    loop {
        tokio::time::sleep(every).await;
        let p = c.published.load(Ordering::Relaxed);
        let a = c.acked.load(Ordering::Relaxed);
        let rate = (p - last.0) as f64 / last.1.elapsed().as_secs_f64();
        last = (p, Instant::now());
        eprintln!(
            "[{:>5.1}s] published {p} acked {a} ({rate:.0}/s), lag max {:.1} ms, errors {}",
            start.elapsed().as_secs_f64(),
            c.max_lag_us.load(Ordering::Relaxed) as f64 / 1000.0,
            c.errors.load(Ordering::Relaxed)
        );
    }
}

/// One MQTT connection: publishes its share on schedule while a sibling task
/// polls the event loop (acks arrive there, pipelined up to `inflight`).
/// Returns how many messages it published.
#[allow(clippy::too_many_arguments)]
async fn connection(
    opts: rumqttc::MqttOptions,
    qos: u8,
    schedule: Schedule,
    sensors: &[usize],
    ids: &[String],
    topics: &[String],
    start: Instant,
    drain: Duration,
    counters: &Arc<SimCounters>,
) -> u64 {
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 1024);
    // Nagle would hold small publishes back waiting for acks: latency, not throughput.
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    let acked = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    let poller = {
        let acked = acked.clone();
        let finished = finished.clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            use rumqttc::{Event, Outgoing, Packet};
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) if qos > 0 => {
                        acked.fetch_add(1, Ordering::Relaxed);
                        counters.acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Incoming(Packet::PubComp(_))) if qos == 2 => {
                        acked.fetch_add(1, Ordering::Relaxed);
                        counters.acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(_))) if qos == 0 => {
                        acked.fetch_add(1, Ordering::Relaxed);
                        counters.acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                    Ok(_) => {}
                    Err(e) => {
                        if finished.load(Ordering::Relaxed) {
                            break;
                        }
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("sensor-fleet: MQTT connection error (reconnecting): {e}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        })
    };
    let q = qos_v311(qos);
    let give_up = start + schedule.due(schedule.total) + drain;
    let mut m = 0u64;
    while m < schedule.total && !counters.stop.load(Ordering::Relaxed) {
        let elapsed = start.elapsed();
        let due = schedule.due_count(elapsed);
        if due > m + 1 {
            let lag = elapsed.saturating_sub(schedule.due(m)).as_micros() as u64;
            counters.max_lag_us.fetch_max(lag, Ordering::Relaxed);
        }
        while m < due {
            let (j, seq) = schedule.slot(m);
            let body = payload::encode(
                &ids[j],
                payload::temperature(sensors[j], seq),
                payload::now_micros(),
                seq,
            );
            // Bounded: with the broker unreachable the request channel stays
            // full; give up at the end of the run plus the drain period.
            let sent = tokio::time::timeout_at(
                give_up.into(),
                client.publish(topics[j].as_str(), q, false, body),
            )
            .await;
            if !matches!(sent, Ok(Ok(()))) {
                counters.stop.store(true, Ordering::Relaxed);
                break;
            }
            counters.published.fetch_add(1, Ordering::Relaxed);
            m += 1;
        }
        if m < schedule.total {
            tokio::time::sleep_until((start + schedule.due(m)).into()).await;
        }
    }
    counters
        .send_end_us
        .fetch_max(start.elapsed().as_micros() as u64, Ordering::Relaxed);
    let deadline = Instant::now() + drain;
    while acked.load(Ordering::Relaxed) < m && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    finished.store(true, Ordering::Relaxed);
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), poller).await;
    m
}

/// Kafka producing settings (the fleet written straight to Kafka, keyed by sensor id).
#[derive(Clone, Debug)]
pub struct KafkaSim {
    pub fleet: Fleet,
    pub endpoint: KafkaEndpoint,
    pub topic: String,
    pub drain_timeout: Duration,
    pub progress: Option<Duration>,
}

/// Produces the fleet to Kafka on schedule (one producer; keyed by sensor id,
/// so each sensor's readings stay in order on one partition).
pub async fn simulate_kafka(cfg: &KafkaSim) -> Result<SimSummary> {
    simulate_kafka_with(cfg, Arc::new(SimCounters::default())).await
}

/// [`simulate_kafka`] with counters the caller can watch.
pub async fn simulate_kafka_with(cfg: &KafkaSim, counters: Arc<SimCounters>) -> Result<SimSummary> {
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || produce_blocking(&cfg, &counters))
        .await
        .context("producer thread panicked")?
}

struct AckCounter(Arc<SimCounters>);

impl rdkafka::ClientContext for AckCounter {}

impl rdkafka::producer::ProducerContext for AckCounter {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &rdkafka::producer::DeliveryResult<'_>, _: ()) {
        match r {
            Ok(_) => self.0.acked.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.0.errors.fetch_add(1, Ordering::Relaxed),
        };
    }
}

fn produce_blocking(cfg: &KafkaSim, counters: &Arc<SimCounters>) -> Result<SimSummary> {
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    let producer: ThreadedProducer<AckCounter> = cfg
        .endpoint
        .client_config()
        .set("linger.ms", "2")
        .set("enable.idempotence", "true")
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(AckCounter(counters.clone()))
        .context("create Kafka producer")?;
    let rounds = cfg.fleet.rounds();
    let sensors: Vec<usize> = (0..cfg.fleet.sensors).collect();
    let ids: Vec<String> = sensors
        .iter()
        .map(|&i| payload::sensor_id(&cfg.fleet.id_prefix, i))
        .collect();
    let schedule = Schedule::new(sensors.len(), cfg.fleet.rate_hz, rounds);
    let start = Instant::now();
    let mut next_progress = cfg.progress.map(|p| start + p);
    let mut m = 0u64;
    while m < schedule.total && !counters.stop.load(Ordering::Relaxed) {
        let elapsed = start.elapsed();
        let due = schedule.due_count(elapsed);
        if due > m + 1 {
            let lag = elapsed.saturating_sub(schedule.due(m)).as_micros() as u64;
            counters.max_lag_us.fetch_max(lag, Ordering::Relaxed);
        }
        while m < due {
            let (j, seq) = schedule.slot(m);
            let body = payload::encode(
                &ids[j],
                payload::temperature(sensors[j], seq),
                payload::now_micros(),
                seq,
            );
            let mut record = BaseRecord::to(&cfg.topic)
                .key(ids[j].as_str())
                .payload(&body);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        // Queue full: let the producer thread drain it.
                        record = r;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
            counters.published.fetch_add(1, Ordering::Relaxed);
            m += 1;
        }
        if let Some(t) = next_progress
            && Instant::now() >= t
        {
            eprintln!(
                "[{:>5.1}s] produced {} acked {}",
                start.elapsed().as_secs_f64(),
                counters.published.load(Ordering::Relaxed),
                counters.acked.load(Ordering::Relaxed)
            );
            next_progress = cfg.progress.map(|p| t + p);
        }
        if m < schedule.total {
            let wake = start + schedule.due(m);
            if let Some(d) = wake.checked_duration_since(Instant::now()) {
                std::thread::sleep(
                    d.min(Duration::from_millis(1))
                        .max(Duration::from_micros(200)),
                );
            }
        }
    }
    counters
        .send_end_us
        .fetch_max(start.elapsed().as_micros() as u64, Ordering::Relaxed);
    producer
        .flush(cfg.drain_timeout)
        .context("flush Kafka producer")?;
    let elapsed = start.elapsed().as_secs_f64();
    let mut expected = Expected::default();
    for (id, n) in ids.into_iter().zip(schedule.per_sensor(m)) {
        expected.per_sensor.insert(id, n);
    }
    Ok(SimSummary {
        published: m,
        acked: counters.acked.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
        elapsed_s: elapsed,
        offered_rate: cfg.fleet.sensors as f64 * cfg.fleet.rate_hz,
        achieved_rate: achieved(m, counters),
        max_lag_ms: counters.max_lag_us.load(Ordering::Relaxed) as f64 / 1000.0,
        expected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_spreads_sensors_evenly_in_time() {
        let s = Schedule::new(4, 10.0, 3); // 40 msg/s, 12 messages
        assert_eq!(s.total, 12);
        assert_eq!(s.slot(0), (0, 0));
        assert_eq!(s.slot(5), (1, 1));
        assert_eq!(s.due(4), Duration::from_millis(100));
        assert_eq!(s.due_count(Duration::ZERO), 1);
        assert_eq!(s.due_count(Duration::from_millis(100)), 5);
        assert_eq!(s.due_count(Duration::from_secs(60)), 12);
        assert_eq!(s.per_sensor(6), vec![2, 2, 1, 1]);
        assert_eq!(s.per_sensor(12).iter().sum::<u64>(), 12);
    }

    #[test]
    fn fleet_splits_sensors_over_connections() {
        let f = Fleet::new(10, 1.0, Duration::from_secs(2));
        assert_eq!(f.rounds(), 2);
        assert_eq!(f.sensors_of(1, 4), vec![1, 5, 9]);
        let all: usize = (0..4).map(|c| f.sensors_of(c, 4).len()).sum();
        assert_eq!(all, 10);
    }
}
