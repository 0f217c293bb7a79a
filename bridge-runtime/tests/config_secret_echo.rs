//! A secret pasted inline into the configuration file, where `{file: …}` or
//! `{env: …}` belongs, never comes back in an error: not on the stderr of
//! `bridge-runtime check` or `run`, not in the termination message `run`
//! writes for Kubernetes. The error still names the field.

mod common;

use std::process::Command;

const CONFIG: &str = r#"
mqtt:
  url: mqtt://127.0.0.1:1
  clientIdPrefix: bridge
  authentication:
    type: password
    username: u
    passwordSecret: {file: /nonexistent/password}
kafka:
  bootstrapServers: 127.0.0.1:1
routes:
  - name: temps
    mqttToKafka:
      mqttTopicFilter: sensors/+/temperature
      kafkaTopic: sensors
"#;

/// Runs `command` on `config` (with a termination-message file); returns
/// the exit code, stdout, stderr and the termination message.
fn run(command: &str, config: &str) -> (i32, String, String, String) {
    let dir = common::temp_dir("config-secret-echo");
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("{}-{run}", std::process::id());
    let termination = dir.join(format!("{name}.termination-log"));
    let path = dir.join(format!("{name}.yaml"));
    let _ = std::fs::remove_file(&termination);
    let config = format!(
        "terminationMessagePath: {}\n{config}",
        termination.display()
    );
    std::fs::write(&path, config).unwrap();
    let out = Command::new(common::BIN)
        .arg(command)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let message = std::fs::read_to_string(&termination).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&termination);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        message,
    )
}

#[test]
fn an_inline_password_is_never_echoed() {
    let inline = |value: &str| {
        CONFIG.replace(
            "passwordSecret: {file: /nonexistent/password}",
            &format!("passwordSecret: {value}"),
        )
    };
    // (configuration, the secret and its parts that must not appear, field)
    let cases: Vec<(String, Vec<&str>, &str)> = vec![
        // A string where `{file|env}` belongs.
        (
            inline("hunter2-inline-5d1c"),
            vec!["hunter2-inline-5d1c", "hunter2"],
            "mqtt.authentication.passwordSecret",
        ),
        // Quotes and backslashes, which serde escapes when it quotes.
        (
            inline(r#"'pa"ss\word-8e2b'"#),
            vec!["pa\"ss", "ss\\word", "word-8e2b", "pa\\\"ss"],
            "mqtt.authentication.passwordSecret",
        ),
        // A numeric PIN.
        (
            inline("918273645"),
            vec!["918273645"],
            "mqtt.authentication.passwordSecret",
        ),
        // A password typed into an enum field (with a backtick in it).
        (
            CONFIG.replace("type: password", "type: 'tr0ub4dor`3-x9'"),
            vec!["tr0ub4dor", "3-x9"],
            "mqtt.authentication.type",
        ),
    ];
    for (config, secrets, field) in &cases {
        for command in ["check", "run"] {
            let (code, out, err, message) = run(command, config);
            assert_eq!(code, 2, "{command} {field}: {err}");
            assert!(err.contains(field), "{command}: {field} in {err}");
            assert!(err.contains("(value hidden)"), "{command}: {err}");
            for secret in secrets {
                for (what, text) in [
                    ("stdout", &out),
                    ("stderr", &err),
                    ("termination message", &message),
                ] {
                    assert!(
                        !text.contains(secret),
                        "{command}: {secret:?} in {what}: {text}"
                    );
                }
            }
            if command == "run" {
                assert!(message.contains(field), "termination message: {message}");
            }
        }
    }
}

#[test]
fn field_names_and_expected_forms_stay_in_the_message() {
    let config = CONFIG.replace(
        "clientIdPrefix: bridge",
        "clientIdPrefix: bridge\n  colour: red",
    );
    let (code, _, err, _) = run("check", &config);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown field `colour`"), "{err}");
    let config = CONFIG.replace("type: password", "type: pasword");
    let (_, _, err, _) = run("check", &config);
    assert!(err.contains("expected `none` or `password`"), "{err}");
    assert!(!err.contains("pasword`"), "{err}");
}
