//! Start, run and drain the bridge: builds the clients, starts one
//! MQTT→Kafka pipeline per connection and the Kafka→MQTT pipeline, serves
//! HTTP, and on SIGTERM stops taking work, waits for in-flight records
//! (never acknowledging what Kafka did not confirm) and exits 0. A fatal
//! error exits 1 with a one-line reason in the termination-message file.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::config::{self, ValidatedConfig};
use crate::error::BridgeError;
use crate::metrics::Observability;
use crate::{http, kafka_side, kafka_to_mqtt, mqtt_to_kafka};

/// glibc gives every thread that allocates its own malloc arena (up to 8
/// per core), and librdkafka runs a thread per broker besides tokio's: freed
/// memory then sits in many half-used arenas. Two arenas cut the peak RSS of
/// the backlog-drain benchmark by about 12 MiB at no measurable CPU cost
/// (bench/RESULTS.md). `MALLOC_ARENA_MAX` in the environment still wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes a glibc tunable; called before the
        // runtime starts its threads.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// How long the process waits, once drained or past its grace period, for
/// tasks still inside Kafka calls before it exits anyway.
const TEARDOWN: Duration = Duration::from_secs(5);

/// Entry point of `bridge-runtime run`.
pub fn main(path: &Path) -> ExitCode {
    limit_malloc_arenas();
    let config = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            write_termination_message(termination_path_of_invalid(path).as_deref(), &e);
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let termination_path = config.config.termination_message_path.clone();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(Arc::new(config)));
    // A pipeline that did not stop within the grace period may sit in a
    // blocking Kafka call (the final synchronous commit, a consumer close
    // waiting for a group coordinator) while Kafka is down; dropping the
    // runtime would wait for it for ever and the process would never exit.
    // What it did not commit or acknowledge is delivered again.
    runtime.shutdown_timeout(TEARDOWN);
    match outcome {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(reason = e.reason(), error = %e, "fatal");
            write_termination_message(termination_path.as_deref(), &e);
            if e.is_config() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The termination-message path of a configuration that failed validation,
/// read leniently so a pod with a bad configuration still tells Kubernetes why.
fn termination_path_of_invalid(path: &Path) -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string(path).ok()?;
    let value: serde_yaml::Value = serde_yaml::from_str(&text).ok()?;
    value
        .get("terminationMessagePath")?
        .as_str()
        .map(std::path::PathBuf::from)
}

fn write_termination_message(path: Option<&Path>, error: &BridgeError) {
    if let Some(path) = path {
        let line = format!("{}: {}\n", error.reason(), error).replace(['\r'], " ");
        if let Err(e) = std::fs::write(path, line) {
            eprintln!(
                "cannot write termination message to {}: {e}",
                path.display()
            );
        }
    }
}

fn init_logging(config: &ValidatedConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(&config.config.log.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.config.log.format {
        bridge_core::LogFormat::Json => builder.json().try_init(),
        bridge_core::LogFormat::Text => builder.try_init(),
    };
}

/// Runs until SIGTERM/SIGINT (Ok) or a fatal error.
pub async fn run(config: Arc<ValidatedConfig>) -> Result<(), BridgeError> {
    let m2k_connections = if config.routes.mqtt_to_kafka.is_empty() {
        0
    } else {
        usize::from(config.config.mqtt.connections)
    };
    let has_k2m = !config.routes.kafka_to_mqtt.is_empty();
    let loops = m2k_connections + usize::from(has_k2m) + 1;
    let observability = Observability::new(m2k_connections, loops);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel();

    let mut mqtt_report_tx = Vec::new();
    let mut mqtt_report_rx = Vec::new();
    for _ in 0..m2k_connections {
        let (tx, rx) = mpsc::unbounded_channel();
        mqtt_report_tx.push(tx);
        mqtt_report_rx.push(rx);
    }
    let (k2m_report_tx, k2m_report_rx) = mpsc::unbounded_channel();
    let producer = Arc::new(kafka_side::producer(
        &config,
        kafka_side::context(
            mqtt_report_tx,
            Some(k2m_report_tx),
            None,
            observability.clone(),
            fatal_tx.clone(),
        ),
    )?);
    let http = http::serve(
        &config.config.http.address,
        observability.clone(),
        shutdown_rx.clone(),
    )
    .await?;
    tracing::info!(
        address = config.config.http.address,
        m2k_connections,
        kafka_to_mqtt = has_k2m,
        "bridge starting"
    );

    // Readiness: Kafka reachable and the fixed topics exist; re-checked periodically.
    let static_topics = static_topics(&config);
    let metadata_task = {
        let producer = producer.clone();
        let observability = observability.clone();
        let heartbeat = loops - 1;
        let mut shutdown = shutdown_rx.clone();
        tokio::spawn(async move {
            loop {
                let (p, o, t) = (
                    producer.clone(),
                    observability.clone(),
                    static_topics.clone(),
                );
                let _ =
                    tokio::task::spawn_blocking(move || kafka_side::check_topics(&p, &t, &o)).await;
                observability.health.beat(heartbeat);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        })
    };

    let mut tasks = Vec::new();
    for (index, reports) in mqtt_report_rx.into_iter().enumerate() {
        tasks.push(tokio::spawn(mqtt_to_kafka::run(
            config.clone(),
            index,
            index,
            producer.clone(),
            reports,
            observability.clone(),
            shutdown_rx.clone(),
            fatal_tx.clone(),
        )));
    }
    if has_k2m {
        let (rebalance_tx, rebalance_rx) = mpsc::unbounded_channel();
        let consumer = kafka_side::consumer(
            &config,
            kafka_side::context(
                Vec::new(),
                None,
                Some(rebalance_tx),
                observability.clone(),
                fatal_tx.clone(),
            ),
        )?;
        tasks.push(tokio::spawn(kafka_to_mqtt::run(
            config.clone(),
            m2k_connections,
            consumer,
            rebalance_rx,
            producer.clone(),
            k2m_report_rx,
            observability.clone(),
            shutdown_rx.clone(),
            fatal_tx.clone(),
        )));
    } else {
        drop(k2m_report_rx);
    }
    drop(fatal_tx);

    let outcome = tokio::select! {
        signal = shutdown_signal() => {
            tracing::info!(signal, "shutting down: no new work, draining in-flight records");
            Ok(())
        }
        Some(e) = fatal_rx.recv() => Err(e),
    };
    let _ = shutdown_tx.send(true);
    if outcome.is_ok() {
        let grace = Duration::from_secs(u64::from(config.config.shutdown_grace_period_seconds) + 5);
        let drained = tokio::time::timeout(grace, futures::future::join_all(tasks)).await;
        if drained.is_err() {
            tracing::warn!("pipelines did not stop within the grace period");
        }
        // Flush what is still queued (dead letters, in-flight records whose
        // acknowledgements were not sent: the broker redelivers those).
        let p = producer.clone();
        let _ = tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            let _ = p.flush(Duration::from_secs(5));
        })
        .await;
    }
    metadata_task.abort();
    http.abort();
    outcome
}

/// Kafka topics the routes name that do not depend on the message.
fn static_topics(config: &ValidatedConfig) -> Vec<String> {
    let mut topics: Vec<String> = config
        .config
        .routes
        .iter()
        .filter_map(|r| r.mqtt_to_kafka.as_ref().map(|m| m.kafka_topic.clone()))
        .filter(|t| !t.contains('{'))
        .chain(
            config
                .config
                .routes
                .iter()
                .filter_map(|r| r.dead_letter_topic.clone()),
        )
        .chain(config.routes.consumed_topics())
        .collect();
    topics.sort();
    topics.dedup();
    topics
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "SIGINT",
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}
