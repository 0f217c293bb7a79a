//! Each bad configuration gives its own clear error, exit code 2, before any connection.

mod common;

use std::process::Command;

const GOOD: &str = r#"
mqtt:
  url: mqtt://127.0.0.1:1
  clientIdPrefix: bridge
kafka:
  bootstrapServers: 127.0.0.1:1
routes:
  - name: temps
    mqttToKafka:
      mqttTopicFilter: sensors/+/temperature
      kafkaTopic: sensors.{1}
      key: {type: jsonField, field: sensor_id}
    deadLetterTopic: dead
"#;

fn run(args: &[&str], config: &str) -> (i32, String, String) {
    let dir = common::temp_dir("config-errors");
    // A name of its own per call: tests run in parallel, and two configs of
    // one length once shared a file.
    let path = dir.join(format!("{}.yaml", testenv::unique_name("config")));
    std::fs::write(&path, config).unwrap();
    let out = Command::new(common::BIN)
        .args(args)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_prints_routes_and_where_a_message_goes() {
    let (code, out, err) = run(
        &[
            "check",
            "--mqtt-topic",
            "sensors/k1/temperature",
            "--payload",
            r#"{"sensor_id":"s9"}"#,
        ],
        GOOD,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("route temps"), "{out}");
    assert!(out.contains("Kafka topic sensors.k1 key s9"), "{out}");
    let (_, out, _) = run(
        &[
            "check",
            "--mqtt-topic",
            "sensors/k1/temperature",
            "--payload",
            "x",
        ],
        GOOD,
    );
    assert!(
        out.contains("dead letter to dead (payload_not_json)"),
        "{out}"
    );
}

#[test]
fn each_bad_configuration_names_its_field() {
    let cases: Vec<(String, &str)> = vec![
        ("mqtt: [".to_owned(), "invalid configuration"),
        (GOOD.replace("clientIdPrefix: bridge", "clientIdPrefix: bridge\n  colour: red"), "colour"),
        (GOOD.replace("sensors/+/temperature", "sensors/#/temperature"), "routes[0].mqttToKafka.mqttTopicFilter"),
        (GOOD.replace("sensors.{1}", "sensors.{3}"), "routes[0].mqttToKafka.kafkaTopic"),
        (
            GOOD.replace(
                "  bootstrapServers: 127.0.0.1:1",
                "  bootstrapServers: 127.0.0.1:1\n  authentication: {type: plain, username: u, passwordSecret: {file: /nonexistent/secret}}",
            ),
            "kafka.authentication.passwordSecret",
        ),
        (
            GOOD.replace("  bootstrapServers: 127.0.0.1:1", "  bootstrapServers: 127.0.0.1:1\n  authentication: {type: oauthbearer}"),
            "kafka.authentication.type",
        ),
        (
            GOOD.replace("  bootstrapServers: 127.0.0.1:1", "  bootstrapServers: 127.0.0.1:1\n  properties: {sasl.password: hunter2}"),
            "kafka.properties: `sasl.password` carries a secret",
        ),
    ];
    for (config, field) in cases {
        for command in ["check", "run"] {
            let (code, _, err) = run(&[command], &config);
            assert_eq!(code, 2, "{command} {field}: {err}");
            assert!(err.contains(field), "{command}: expected {field} in: {err}");
            assert!(!err.contains("hunter2"), "secret leaked: {err}");
        }
    }
}

/// `run` with an invalid configuration exits 2 before connecting and still
/// writes the reason to the termination-message file the configuration names,
/// so `kubectl describe pod` shows why the bridge cannot start.
#[test]
fn run_with_an_invalid_configuration_writes_the_termination_message() {
    let dir = common::temp_dir("config-errors-termination");
    let termination = dir.join("termination-log");
    let _ = std::fs::remove_file(&termination);
    let config = format!(
        "terminationMessagePath: {}\n{}",
        termination.display(),
        GOOD.replace("sensors.{1}", "sensors.{3}")
    );
    let (code, _, err) = run(&["run"], &config);
    assert_eq!(code, 2, "{err}");
    let message = std::fs::read_to_string(&termination).expect("termination message written");
    assert!(message.contains("{3}"), "{message}");
    assert_eq!(message.lines().count(), 1, "one line: {message}");
}
