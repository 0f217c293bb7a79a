//! The monitoring kit (README, "Alerts and dashboards") against the real
//! thing: Prometheus's own promtool checks and unit-tests the alert rules of
//! `deploy/monitoring/` and of the chart; a real Prometheus scrapes a running
//! bridge and the operator through a Kafka outage, the held-back alert
//! becomes true before the broker's queue (a small `max_queued_messages` for
//! the test) would overflow, and nothing is lost; every expression of the
//! dashboard returns a series there.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use install_tests::*;
use testenv::prometheus::{Prometheus, ScrapeJob};

/// The rules file users load, and promtool's unit tests of it.
const RULES_FILE: &str = "deploy/monitoring/mqtt-kafka-bridge.rules.yaml";
const UNIT_TESTS: &str = "install-tests/monitoring/alerts.test.yaml";

/// The alerts the kit promises (issue #16; README runbook).
const ALERTS: &[&str] = &[
    "MqttKafkaBridgeBrokerQueueFilling",
    "MqttKafkaBridgeRouteRefused",
    "MqttKafkaBridgeMessagesDeadLettered",
    "MqttKafkaBridgeMessagesDropped",
    "MqttKafkaBridgeNotReady",
    "MqttKafkaBridgeConnectionFlapping",
    "MqttKafkaOperatorReconcileFailing",
    "MqttKafkaBridgeRolloutHalted",
];
const BROKER_QUEUE_ALERT: &str = "MqttKafkaBridgeBrokerQueueFilling";

/// Dashboard expressions that only return data in a real cluster.
const DASHBOARD_EXCEPTIONS: &[(&str, &str)] = &[(
    "kube_pod_container_status_restarts_total",
    "kube-state-metrics' pod restarts: no kube-state-metrics in the test environment",
)];

fn promtool(args: &[&str]) -> String {
    run_ok(
        Command::new(var("PROMTOOL"))
            .args(args)
            .current_dir(workspace()),
        None,
    )
}

/// The alert rules (name → rule) of a rules file.
fn alert_rules(text: &str) -> BTreeMap<String, serde_yaml::Value> {
    let doc: serde_yaml::Value = serde_yaml::from_str(text).expect("rules YAML");
    doc["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .filter_map(|r| Some((r["alert"].as_str()?.to_string(), r)))
        .collect()
}

#[test]
fn promtool_checks_the_rules_of_deploy_and_of_the_chart() {
    let deploy = std::fs::read_to_string(workspace().join(RULES_FILE)).unwrap();
    let out = promtool(&["check", "rules", RULES_FILE]);
    assert!(out.contains("SUCCESS"), "{out}");
    // The chart's PrometheusRule with non-default values, its groups checked the same way.
    let values = values_file("custom.yaml");
    let chart_rules = rendered_alert_rules(&["-f", values.to_str().unwrap()]);
    let dir = std::env::temp_dir().join(unique_name("promtool-check"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("chart.rules.yaml");
    std::fs::write(&path, &chart_rules).unwrap();
    let out = promtool(&["check", "rules", path.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.contains("SUCCESS"), "{out}");
    assert!(
        chart_rules.contains("> 0.5 * 1000000"),
        "the broker's queue limit from the values:\n{chart_rules}"
    );

    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let rules = alert_rules(&deploy);
    assert_eq!(
        rules.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        ALERTS.iter().copied().collect::<BTreeSet<_>>(),
    );
    for (name, rule) in &rules {
        let annotations = &rule["annotations"];
        let description = annotations["description"].as_str().unwrap_or_default();
        assert!(
            annotations["summary"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{name}: summary"
        );
        assert!(
            description.contains(&format!("README.md#{}", name.to_lowercase())),
            "{name}: its description links its runbook: {description}"
        );
        assert!(
            readme.contains(&format!("\n#### {name}\n")),
            "README has no runbook section `#### {name}`"
        );
        assert!(rule["labels"]["severity"].as_str().is_some(), "{name}");
    }
}

/// Every alert has a promtool case where it fires and one where it must not.
#[test]
fn promtool_unit_tests_fire_and_hold_every_alert() {
    let out = promtool(&["test", "rules", UNIT_TESTS]);
    assert!(out.contains("SUCCESS"), "{out}");
    let tests: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(workspace().join(UNIT_TESTS)).unwrap())
            .unwrap();
    let mut fires = BTreeSet::new();
    let mut holds = BTreeSet::new();
    for case in tests["tests"].as_sequence().unwrap().iter().flat_map(|t| {
        t["alert_rule_test"]
            .as_sequence()
            .cloned()
            .unwrap_or_default()
    }) {
        let name = case["alertname"].as_str().unwrap().to_string();
        if case["exp_alerts"]
            .as_sequence()
            .is_some_and(|a| !a.is_empty())
        {
            fires.insert(name);
        } else {
            holds.insert(name);
        }
    }
    for alert in ALERTS {
        assert!(
            fires.contains(*alert),
            "no promtool case where {alert} fires"
        );
        assert!(
            holds.contains(*alert),
            "no promtool case where {alert} must not fire"
        );
    }
}

/// Kills a child process when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts Kafka again if the test fails during the outage.
struct KafkaBack(bool);

impl Drop for KafkaBack {
    fn drop(&mut self) {
        if self.0 {
            testenv::control("start", "kafka");
        }
    }
}

fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(address).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split(' ').nth(1)?.parse().ok()?;
    Some((code, text.split_once("\r\n\r\n")?.1.to_string()))
}

fn kafka_config() -> rdkafka::ClientConfig {
    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", var("KAFKA_BOOTSTRAP"));
    c
}

fn create_topics(names: &[&str]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        kafka_config().create().expect("Kafka admin client");
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|n| NewTopic::new(n, 3, TopicReplication::Fixed(1)))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for result in runtime
        .block_on(admin.create_topics(&topics, &AdminOptions::new()))
        .expect("create topics")
    {
        result.expect("topic created");
    }
}

fn produce(topic: &str, key: &str, payload: &str) {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let producer: ThreadedProducer<DefaultProducerContext> =
        kafka_config().create().expect("Kafka producer");
    producer
        .send(BaseRecord::to(topic).key(key).payload(payload))
        .map_err(|(e, _)| e)
        .expect("produce");
    producer.flush(Duration::from_secs(10)).expect("flush");
}

/// Distinct payloads of `topic`, read from the beginning until `want` or `timeout`.
fn distinct_payloads(topic: &str, want: usize, timeout: Duration) -> HashSet<Vec<u8>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let consumer: BaseConsumer = kafka_config()
        .set("group.id", unique_name("monitoring-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("Kafka consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let start = Instant::now();
    let mut seen = HashSet::new();
    while seen.len() < want && start.elapsed() < timeout {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            seen.insert(m.payload().unwrap_or_default().to_vec());
        }
    }
    seen
}

/// A QoS 1 publisher on the anonymous listener and the count of PUBACKs it got.
fn mqtt_publisher(name: &str) -> (rumqttc::Client, Arc<AtomicU64>) {
    let url = var("MQTT_URL");
    let (host, port) = url
        .trim_start_matches("mqtt://")
        .rsplit_once(':')
        .expect("MQTT_URL host:port");
    let mut options =
        rumqttc::MqttOptions::new(unique_name(name), host, port.parse::<u16>().expect("port"));
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(100);
    let (client, mut connection) = rumqttc::Client::new(options, 1000);
    let acked = Arc::new(AtomicU64::new(0));
    let counter = acked.clone();
    std::thread::spawn(move || {
        for event in connection.iter() {
            match event {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(rumqttc::ConnectionError::RequestsDone) => return,
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    });
    (client, acked)
}

/// Alerts Prometheus holds now: name and state (`pending`: the expression is
/// true, the rule's `for` not over yet; `firing`), one per label set.
fn active_alerts(prometheus: &Prometheus) -> Vec<(String, String)> {
    prometheus
        .alerts()
        .into_iter()
        .map(|a| {
            (
                a["labels"]["alertname"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                a["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The first value of an instant query, if it has one.
fn value(prometheus: &Prometheus, promql: &str) -> Option<f64> {
    prometheus.query(promql).ok()?.first()?["value"][1]
        .as_str()?
        .parse()
        .ok()
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The broker's `max_queued_messages` the alert rules are given here, and
/// the publishing rate: the queue would overflow after QUEUE / RATE = 30 s
/// of outage (the test broker's real limit is far higher, so nothing is
/// dropped while the test shows when the alert comes).
const QUEUE: u32 = 1500;
const RATE: u32 = 50;
/// Longest outage: past the overflow point, the alert must have come before.
const MAX_OUTAGE: Duration = Duration::from_secs(45);

#[test]
fn kafka_outage_alerts_before_the_broker_queue_overflows_and_the_dashboard_has_data() {
    let test_started = Instant::now();
    let ns = TempNamespace::for_real_node("monitoring");
    let p = unique_name("obs");
    let name = "sensors";
    let topics = [
        p.clone(),
        format!("{p}-json"),
        format!("{p}-dlt"),
        format!("{p}-cmd"),
    ];
    create_topics(&topics.iter().map(String::as_str).collect::<Vec<_>>());
    for i in 0..5 {
        produce(&topics[3], &format!("k{i}"), &format!("command {i}"));
    }

    // The bridge, both ways: numbered readings, a route with a dead-letter
    // topic and one without (a non-JSON message each), commands from Kafka.
    let dir = std::env::temp_dir().join(unique_name("monitoring-bridge"));
    std::fs::create_dir_all(&dir).unwrap();
    let bridge_port = free_port();
    let bridge_http = format!("127.0.0.1:{bridge_port}");
    let config = format!(
        "mqtt:\n  url: {mqtt}\n  clientIdPrefix: {p}\n  protocolVersion: '3.1.1'\n\
         kafka:\n  bootstrapServers: {kafka}\n  producer:\n    lingerMs: 2\n    deliveryTimeoutMs: 5000\n  consumer:\n    autoOffsetReset: earliest\n\
         routes:\n\
         \x20 - name: seq\n    mqttToKafka: {{mqttTopicFilter: '{p}/+', kafkaTopic: '{p}', key: {{type: topicLevel, level: 1}}, headers: false}}\n\
         \x20 - name: dl\n    mqttToKafka: {{mqttTopicFilter: '{p}-dl', kafkaTopic: '{p}-json', key: {{type: jsonField, field: id}}}}\n    deadLetterTopic: '{p}-dlt'\n\
         \x20 - name: drop\n    mqttToKafka: {{mqttTopicFilter: '{p}-drop', kafkaTopic: '{p}-json', key: {{type: jsonField, field: id}}}}\n\
         \x20 - name: cmd\n    kafkaToMqtt: {{kafkaTopics: ['{p}-cmd'], mqttTopic: '{p}-cmd/{{key}}', qos: 1}}\n\
         http:\n  address: {bridge_http}\nshutdownGracePeriodSeconds: 10\nterminationMessagePath: {term}\n",
        mqtt = var("MQTT_URL"),
        kafka = var("KAFKA_BOOTSTRAP"),
        term = dir.join("termination").display(),
    );
    std::fs::write(dir.join("bridge.yaml"), &config).unwrap();
    let bridge_log = dir.join("bridge.log");
    let _bridge = Running(
        Command::new(cargo_bin("bridge-runtime"))
            .args(["run", "--config"])
            .arg(dir.join("bridge.yaml"))
            .env("RUST_LOG", "info,librdkafka=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&bridge_log).unwrap())
            .spawn()
            .expect("start bridge-runtime"),
    );
    let log_of = |path: &std::path::Path| {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    };
    wait_until(
        "the bridge answers /readyz 200",
        Duration::from_secs(60),
        || {
            http_get(&bridge_http, "/readyz")
                .filter(|(code, _)| *code == 200)
                .map(|_| ())
        },
    );

    // The operator reconciles two bridges: `sensors`, whose (kwok) pod is the
    // bridge above (host network: the operator asks 127.0.0.1:<port> for
    // its report), and `broken`, which names a Secret that does not exist.
    run_ok(
        kubectl()
            .args(["apply", "--server-side", "--force-conflicts", "-f"])
            .arg(workspace().join("deploy/crd.yaml")),
        None,
    );
    let operator_http = format!("127.0.0.1:{}", free_port());
    let operator_log = dir.join("operator.log");
    let _operator = Running(
        Command::new(cargo_bin("operator"))
            .args([
                "--bridge-image=localhost/mqtt-kafka-bridge:monitoring-test",
                &format!("--http-address={operator_http}"),
                "--log-format=text",
                &format!("--namespace={}", ns.name),
            ])
            .env("KUBECONFIG", var("KUBECONFIG"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&operator_log).unwrap())
            .spawn()
            .expect("start the operator"),
    );
    let bridges = format!(
        "apiVersion: mqttkafka.io/v1alpha1\nkind: MqttKafkaBridge\nmetadata:\n  name: {name}\nspec:\n  replicas: 1\n\
         \x20 mqtt: {{url: '{mqtt}', clientIdPrefix: {p}-cr}}\n  kafka: {{bootstrapServers: '{kafka}'}}\n\
         \x20 routes:\n    - name: seq\n      mqttToKafka: {{mqttTopicFilter: '{p}-cr/+', kafkaTopic: '{p}'}}\n\
         \x20 http: {{port: {bridge_port}}}\n  template: {{pod: {{hostNetwork: true}}}}\n\
         ---\napiVersion: mqttkafka.io/v1alpha1\nkind: MqttKafkaBridge\nmetadata:\n  name: broken\nspec:\n  replicas: 1\n\
         \x20 mqtt:\n    url: '{mqtt}'\n    clientIdPrefix: {p}-broken\n    authentication: {{type: password, username: bridge, passwordSecret: {{secretName: missing, key: password}}}}\n\
         \x20 kafka: {{bootstrapServers: '{kafka}'}}\n\
         \x20 routes:\n    - name: seq\n      mqttToKafka: {{mqttTopicFilter: '{p}-broken/+', kafkaTopic: '{p}'}}\n",
        mqtt = var("MQTT_URL"),
        kafka = var("KAFKA_BOOTSTRAP"),
    );
    run_ok(
        kubectl().args(["apply", "-n", &ns.name, "-f", "-"]),
        Some(&bridges),
    );

    // Prometheus scrapes both, labelled as the chart's PodMonitor and
    // ServiceMonitor label them in a cluster, with the chart's rules given
    // the small queue limit.
    let rules =
        rendered_alert_rules(&["--set", &format!("alerts.brokerMaxQueuedMessages={QUEUE}")]);
    let prometheus = Prometheus::start(
        "monitoring",
        &[
            ScrapeJob {
                name: "bridges",
                targets: vec![bridge_http.clone()],
                labels: vec![
                    ("namespace", ns.name.clone()),
                    ("bridge", name.to_string()),
                    ("slot", "0".into()),
                    ("pod", format!("{name}-0-test")),
                ],
                honor_labels: false,
            },
            ScrapeJob {
                name: "operator",
                targets: vec![operator_http.clone()],
                labels: vec![
                    ("namespace", "mqtt-kafka-system".into()),
                    ("pod", "operator-test".into()),
                ],
                honor_labels: true,
            },
        ],
        &[("bridge.rules.yaml", &rules)],
    );
    let in_ns = format!("namespace=\"{}\"", ns.name);

    // Traffic: one non-JSON message for each JSON route, then numbered
    // readings at RATE per second until the outage is over.
    let (publisher, acked) = mqtt_publisher("monitoring-pub");
    for topic in [format!("{p}-dl"), format!("{p}-drop")] {
        publisher
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, "not json")
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sending = {
        let stop = stop.clone();
        let p = p.clone();
        let publisher = publisher.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut sent = 0u32;
            while !stop.load(Ordering::Relaxed) {
                publisher
                    .publish(
                        format!("{p}/k{}", sent % 10),
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        sent.to_string(),
                    )
                    .expect("publish");
                sent += 1;
                let due = Duration::from_secs_f64(f64::from(sent) / f64::from(RATE));
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            sent
        })
    };

    // Before the outage: Prometheus knows the arrival rate (rate() over one
    // minute needs a minute of traffic to see all of it, as a bridge that has
    // been running has), the operator says `sensors` is Ready and `broken`
    // is not.
    wait_until(
        "Prometheus sees the bridge's arrival rate",
        Duration::from_secs(120),
        || {
            value(
                &prometheus,
                &format!(
                    "namespace_bridge_pod:bridge_messages_received_mqtt_to_kafka:rate1m{{{in_ns}}} > {}",
                    f64::from(RATE) * 0.9
                ),
            )
        },
    );
    wait_until(
        "the operator's bridge_ready gauges (sensors 1, broken 0)",
        Duration::from_secs(60),
        || {
            let ready = value(
                &prometheus,
                &format!("mqtt_kafka_operator_bridge_ready{{{in_ns}, bridge=\"{name}\"}}"),
            )?;
            let broken = value(
                &prometheus,
                &format!("mqtt_kafka_operator_bridge_ready{{{in_ns}, bridge=\"broken\"}}"),
            )?;
            (ready == 1.0 && broken == 0.0).then_some(())
        },
    );
    let before: Vec<_> = active_alerts(&prometheus);
    assert!(
        !before.iter().any(|(n, ..)| n == BROKER_QUEUE_ALERT),
        "{BROKER_QUEUE_ALERT} before the outage: {before:?}"
    );
    let rate_before = value(
        &prometheus,
        "max(namespace_bridge_pod:bridge_messages_received_mqtt_to_kafka:rate1m)",
    )
    .unwrap_or_default();

    // The outage. Prometheus is asked four times a second which alerts it holds.
    let mut kafka_back = KafkaBack(true);
    let outage_started = Instant::now();
    let stopping = std::thread::spawn(|| testenv::control("stop", "kafka"));
    let mut first_true: BTreeMap<String, (Duration, String)> = BTreeMap::new();
    let mut queue_at_alert = None;
    for (alert, state) in &before {
        first_true.insert(
            alert.clone(),
            (Duration::ZERO, format!("{state} before the outage")),
        );
    }
    while outage_started.elapsed() < MAX_OUTAGE {
        for (alert, state) in active_alerts(&prometheus) {
            if let std::collections::btree_map::Entry::Vacant(entry) = first_true.entry(alert) {
                if entry.key() == BROKER_QUEUE_ALERT {
                    // The estimate the rule compares with the limit.
                    queue_at_alert = value(
                        &prometheus,
                        "max(bridge_ack_held_back_seconds) * max(max_over_time(namespace_bridge_pod:bridge_messages_received_mqtt_to_kafka:rate1m[1h]))",
                    );
                }
                entry.insert((outage_started.elapsed(), state));
            }
        }
        // A few seconds after the alert, to see the refused deliveries too.
        if first_true
            .get(BROKER_QUEUE_ALERT)
            .is_some_and(|(t, _)| outage_started.elapsed() > *t + Duration::from_secs(5))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let outage_length = outage_started.elapsed();
    stopping.join().expect("kafka stopped");
    testenv::control("start", "kafka");
    kafka_back.0 = false;
    let outage_length_total = outage_started.elapsed();

    // Traffic goes on a little after Kafka is back, then everything must arrive.
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    let sent = sending.join().expect("publisher");
    wait_until(
        "the broker acknowledged every publish",
        Duration::from_secs(60),
        || (acked.load(Ordering::Relaxed) >= u64::from(sent) + 2).then_some(()),
    );
    let delivered = distinct_payloads(&p, sent as usize, Duration::from_secs(120));
    let missing: Vec<u32> = (0..sent)
        .filter(|n| !delivered.contains(n.to_string().as_bytes()))
        .collect();
    let dead_lettered = distinct_payloads(&topics[2], 1, Duration::from_secs(30)).len();
    let dropped = value(
        &prometheus,
        &format!("sum(bridge_messages_dropped_total{{{in_ns}, route=\"drop\"}})"),
    )
    .unwrap_or_default();

    // The held-back alert clears once Kafka takes the messages again.
    let cleared = wait_until(
        "the held-back alert clears after the outage",
        Duration::from_secs(60),
        || {
            (!active_alerts(&prometheus)
                .iter()
                .any(|(n, ..)| n == BROKER_QUEUE_ALERT))
            .then(|| outage_started.elapsed())
        },
    );

    // A broker restart: the bridge reconnects (bridge_reconnects_total).
    testenv::control("restart", "mqtt");
    wait_until(
        "Prometheus sees the bridge's reconnects",
        Duration::from_secs(60),
        || {
            // Two samples of one series: the dashboard shows its increase.
            value(
                &prometheus,
                &format!("max(count_over_time(bridge_reconnects_total{{{in_ns}}}[1m])) >= 2"),
            )
        },
    );
    wait_until(
        "the bridge's MQTT connections are up again",
        Duration::from_secs(60),
        || {
            value(
                &prometheus,
                &format!("min(bridge_connection_up{{{in_ns}}}) == 1"),
            )
        },
    );
    let dashboard_failures = dashboard_failures(&prometheus);

    let overflow_after = Duration::from_secs(u64::from(QUEUE / RATE));
    println!(
        "monitoring | arrival rate before the outage {rate_before:.1} msg/s; the broker's queue ({QUEUE}) would overflow after {overflow_after:?} of outage"
    );
    for alert in ALERTS {
        match first_true.get(*alert) {
            Some((t, state)) => println!(
                "monitoring | {alert}: expression true {:.1} s after Kafka was stopped ({state})",
                t.as_secs_f64()
            ),
            None => println!("monitoring | {alert}: expression not true during the outage"),
        }
    }
    println!(
        "monitoring | outage {:.1} s (Kafka started again after {:.1} s); {BROKER_QUEUE_ALERT} estimated queue at first sight {:.0} messages; cleared {:.1} s after the outage began",
        outage_length.as_secs_f64(),
        outage_length_total.as_secs_f64(),
        queue_at_alert.unwrap_or(f64::NAN),
        cleared.as_secs_f64()
    );
    println!(
        "monitoring | sent {sent} | delivered {} | dead-lettered {dead_lettered} (route dl) | dropped {dropped} (route drop) | lost {} | test took {:.0} s",
        delivered.len().min(sent as usize),
        missing.len(),
        test_started.elapsed().as_secs_f64()
    );

    let (queue_alert_at, _) = first_true
        .get(BROKER_QUEUE_ALERT)
        .unwrap_or_else(|| {
            panic!(
                "{BROKER_QUEUE_ALERT} never became true in {MAX_OUTAGE:?} of outage: {first_true:?}\nPrometheus: {}\nbridge:\n{}",
                prometheus.log(),
                log_of(&bridge_log)
            )
        })
        .clone();
    assert!(
        queue_alert_at < overflow_after,
        "{BROKER_QUEUE_ALERT} came after {queue_alert_at:?}: the broker's queue of {QUEUE} overflows after {overflow_after:?} at {RATE} msg/s"
    );
    assert!(
        queue_alert_at > Duration::from_secs(5),
        "{BROKER_QUEUE_ALERT} after {queue_alert_at:?}: before the queue could hold even half its limit"
    );
    assert!(
        missing.is_empty(),
        "{} of {sent} lost, first {:?}\nbridge:\n{}",
        missing.len(),
        &missing[..missing.len().min(20)],
        log_of(&bridge_log)
    );
    assert_eq!(dead_lettered, 1, "the non-JSON message of route dl");
    assert_eq!(dropped, 1.0, "the non-JSON message of route drop");
    // The operator's view: `broken` was not Ready from the start.
    assert!(
        first_true.contains_key("MqttKafkaBridgeNotReady"),
        "MqttKafkaBridgeNotReady (bridge broken): {first_true:?}\noperator:\n{}",
        log_of(&operator_log)
    );
    assert!(
        !first_true.contains_key("MqttKafkaOperatorReconcileFailing"),
        "a missing Secret is the bridge's error, not the operator's: {first_true:?}"
    );
    assert!(
        dashboard_failures.is_empty(),
        "dashboard expressions without a series:\n{}",
        dashboard_failures.join("\n")
    );
}

/// Evaluates every expression of the dashboard (panel targets, and the
/// variables' `label_values` queries) with its variables set to "all";
/// returns those that fail or return no series.
fn dashboard_failures(prometheus: &Prometheus) -> Vec<String> {
    let dashboard: serde_json::Value = serde_json::from_str(&chart_dashboard()).unwrap();
    let substitute = |expr: &str| {
        expr.replace("$__rate_interval", "1m")
            .replace("$max_queued_messages", &QUEUE.to_string())
            .replace("$namespace", ".*")
            .replace("$bridge", ".*")
            .replace("$route", ".*")
    };
    let mut failures = Vec::new();
    let mut count = 0;
    let mut check = |what: String, expr: String, label: Option<String>| {
        count += 1;
        if let Some((metric, why)) = DASHBOARD_EXCEPTIONS.iter().find(|(m, _)| expr.contains(m)) {
            println!("monitoring | dashboard: {what}: not checked ({metric}: {why})");
            return;
        }
        match prometheus.query(&expr) {
            Err(e) => failures.push(format!("{what}: {expr}: {e}")),
            Ok(series) if series.is_empty() => failures.push(format!("{what}: {expr}: no series")),
            Ok(series) => {
                if let Some(label) = label
                    && !series.iter().any(|s| s["metric"][&label].is_string())
                {
                    failures.push(format!("{what}: {expr}: no series with label {label}"));
                }
            }
        }
    };
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            check(
                format!("panel {:?}", panel["title"].as_str().unwrap_or_default()),
                substitute(expr),
                None,
            );
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        let Some(query) = variable["query"]["query"].as_str() else {
            continue;
        };
        // label_values(<selector>, <label>)
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable query {query}"));
        let (selector, label) = inner.rsplit_once(',').unwrap();
        check(
            format!("variable {}", variable["name"]),
            substitute(selector.trim()),
            Some(label.trim().to_string()),
        );
    }
    println!("monitoring | dashboard: {count} expressions evaluated");
    failures
}
