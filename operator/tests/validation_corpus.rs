//! The shared validation corpus (`bridge-core/tests/validation-corpus.yaml`)
//! through every place a bridge is checked: the CRD (server-side dry-run on
//! the test apiserver), the operator (`validate::check_spec`) and
//! `bridge-runtime check` on the manifest. All three must give each case its
//! expected verdict, and every refusal must name the case's field. For an
//! accepted case the configuration the operator generates must pass
//! `bridge-runtime check` too, so what the operator admits the runtime runs.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use crds::MqttKafkaBridge;
use kube::Api;
use kube::api::PostParams;
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
struct Corpus {
    base: Value,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    #[serde(default)]
    spec: Option<Value>,
    #[serde(default)]
    up: Option<Value>,
    #[serde(default)]
    down: Option<Value>,
    verdict: String,
    #[serde(default)]
    field: Option<String>,
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn manifest(base: &Value, case: &Case, index: usize) -> Value {
    let mut m = base.clone();
    m["metadata"]["name"] = Value::String(format!("corpus-{index}"));
    if let Some(p) = &case.spec {
        merge(&mut m["spec"], p);
    }
    if let Some(p) = &case.up {
        merge(&mut m["spec"]["routes"][0], p);
    }
    if let Some(p) = &case.down {
        merge(&mut m["spec"]["routes"][1], p);
    }
    m
}

/// Accept, or reject with the message.
type Verdict = Result<(), String>;

fn runtime_check(file: &PathBuf, text: &str) -> Verdict {
    std::fs::write(file, text).unwrap();
    let out = Command::new(testenv::cargo_bin("bridge-runtime"))
        .args(["check", "--config"])
        .arg(file)
        .output()
        .unwrap();
    match out.status.code() {
        Some(0) => Ok(()),
        Some(2) => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        other => panic!(
            "bridge-runtime check exited {other:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Secrets of a generated configuration are files of the pod; here every
/// one of them reads an environment variable that is set.
fn with_readable_secrets(v: &mut serde_yaml::Value) {
    match v {
        serde_yaml::Value::Mapping(m) => {
            let is_secret = m.len() == 1 && m.contains_key("file") && m["file"].is_string();
            if is_secret {
                m.clear();
                m.insert("env".into(), "PATH".into());
            } else {
                for (_, v) in m.iter_mut() {
                    with_readable_secrets(v);
                }
            }
        }
        serde_yaml::Value::Sequence(s) => s.iter_mut().for_each(with_readable_secrets),
        _ => {}
    }
}

fn short(v: &Verdict) -> String {
    match v {
        Ok(()) => "accept".into(),
        Err(_) => "reject".into(),
    }
}

#[tokio::test]
async fn every_place_gives_the_corpus_verdicts() {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../bridge-core/tests/validation-corpus.yaml"),
    )
    .unwrap();
    let corpus: Corpus = serde_yaml::from_str(&text).unwrap();
    assert!(corpus.cases.len() >= 30, "the corpus has at least 30 cases");
    let client = client().await;
    let ns = namespace(&client, "corpus").await;
    let api: Api<MqttKafkaBridge> = Api::namespaced(client.clone(), &ns);
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let dir = std::env::temp_dir().join(testenv::unique_name("corpus"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bridge.yaml");

    let mut problems = Vec::new();
    println!("| case | expected | CRD | operator | bridge-runtime check |");
    println!("| --- | --- | --- | --- | --- |");
    for (i, case) in corpus.cases.iter().enumerate() {
        let m = manifest(&corpus.base, case, i);
        let bridge: MqttKafkaBridge = serde_json::from_value(m.clone())
            .unwrap_or_else(|e| panic!("{}: not a MqttKafkaBridge: {e}", case.name));

        let crd: Verdict = api
            .create(&dry_run, &bridge)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        let operator: Verdict = operator::validate::check_spec(&bridge.spec)
            .map(|_| ())
            .map_err(|e| e.to_string());
        let runtime = runtime_check(&file, &serde_yaml::to_string(&m).unwrap());
        println!(
            "| {} | {} | {} | {} | {} |",
            case.name,
            case.verdict,
            short(&crd),
            short(&operator),
            short(&runtime)
        );

        for (place, verdict) in [
            ("CRD", &crd),
            ("operator", &operator),
            ("bridge-runtime check", &runtime),
        ] {
            match (case.verdict.as_str(), verdict) {
                ("accept", Ok(())) => {}
                ("reject", Err(message)) => {
                    let field = case.field.as_deref().unwrap_or_default();
                    if !message.contains(field) {
                        problems.push(format!(
                            "{}: {place} refused without naming {field}: {message}",
                            case.name
                        ));
                    }
                }
                (expected, got) => problems.push(format!(
                    "{}: expected {expected}, {place} said {got:?}",
                    case.name
                )),
            }
        }

        if case.verdict == "accept" {
            // What the operator would run: slot 0's generated file.
            let config = operator::build::config::bridge_config(&bridge.spec, 0);
            let mut yaml = serde_yaml::to_value(&config).unwrap();
            with_readable_secrets(&mut yaml);
            if let Err(e) = runtime_check(&file, &serde_yaml::to_string(&yaml).unwrap()) {
                problems.push(format!(
                    "{}: the generated configuration is refused by bridge-runtime: {e}",
                    case.name
                ));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    drop_namespace(&client, &ns).await;
    assert!(
        problems.is_empty(),
        "{} disagreement(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}
