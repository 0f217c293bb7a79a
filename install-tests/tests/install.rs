//! Installing for real into the test control plane: `helm install`,
//! `helm upgrade`, `helm uninstall`, the CRD upgrade path, and the plain
//! manifests of `deploy/`. (kwok marks the operator's pods Running and Ready;
//! nothing runs in them, so these tests are about the objects and RBAC.)

use std::time::Duration;

use install_tests::*;

fn chart_crd() -> std::path::PathBuf {
    chart_dir().join("crds/mqttkafkabridges.yaml")
}

/// `kubectl auth can-i` as the ServiceAccount.
fn can_i(sa_ns: &str, sa: &str, verb: &str, resource: &str, ns: &str) -> bool {
    let out = output(
        kubectl()
            .args(["auth", "can-i", verb, resource, "-n", ns])
            .arg(format!("--as=system:serviceaccount:{sa_ns}:{sa}")),
        None,
    );
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

#[test]
fn helm_install_upgrade_and_uninstall() {
    let ns = TempNamespace::new("helm");
    let watched = TempNamespace::new("helm-watched");
    let release = unique_name("mko");
    let fullname = format!("{release}-mqtt-kafka-operator");

    let notes = run_ok(
        helm().args(["install", &release]).arg(chart_dir()).args([
            "--namespace",
            &ns.name,
            "--wait",
            "--timeout",
            WAIT,
        ]),
        None,
    );
    assert!(
        notes.contains("kind: MqttKafkaBridge"),
        "NOTES tell how to create a bridge:\n{notes}"
    );
    // The first bridge NOTES suggests is one the apiserver accepts.
    let bridge: String = notes
        .lines()
        .skip_while(|l| !l.starts_with("  apiVersion: mqttkafka.io/"))
        .take_while(|l| !l.trim().is_empty())
        .map(|l| format!("{}\n", l.strip_prefix("  ").unwrap_or(l)))
        .collect();
    run_ok(
        kubectl().args(["apply", "--dry-run=server", "-n", &watched.name, "-f", "-"]),
        Some(&bridge),
    );
    wait_available(&ns.name, &fullname);
    assert!(get("clusterrole", None, &fullname).is_some());
    assert!(get("clusterrolebinding", None, &fullname).is_some());
    assert!(get("service", Some(&ns.name), &format!("{fullname}-metrics")).is_some());
    assert!(can_i(
        &ns.name,
        &fullname,
        "watch",
        "secrets",
        &watched.name
    ));
    assert!(!can_i(
        &ns.name,
        &fullname,
        "create",
        "secrets",
        &watched.name
    ));
    assert!(!can_i(
        &ns.name,
        &fullname,
        "patch",
        "customresourcedefinitions",
        "default"
    ));

    // Two replicas confined to one namespace: election on, rights only there.
    run_ok(
        helm()
            .args(["upgrade", &release])
            .arg(chart_dir())
            .args(["--namespace", &ns.name, "--wait", "--timeout", WAIT])
            .args(["--set", "replicaCount=2", "--set", "log.level=debug"])
            .args(["--set", &format!("watchNamespace={}", watched.name)]),
        None,
    );
    wait_available(&ns.name, &fullname);
    let deploy = get("deployment", Some(&ns.name), &fullname).unwrap();
    assert_eq!(deploy["spec"]["replicas"], 2);
    wait_for(
        "2 ready operator replicas",
        Duration::from_secs(120),
        || {
            let d = get("deployment", Some(&ns.name), &fullname)?;
            (d["status"]["readyReplicas"] == 2 && d["status"]["updatedReplicas"] == 2).then_some(())
        },
    );
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    let args = container["args"].to_string();
    assert!(args.contains("--leader-election"), "{args}");
    assert!(
        args.contains(&format!("--namespace={}", watched.name)),
        "{args}"
    );
    assert!(
        container["env"].to_string().contains("debug"),
        "RUST_LOG=debug"
    );
    assert!(
        get("clusterrole", None, &fullname).is_none(),
        "ClusterRole removed"
    );
    assert!(get("role", Some(&watched.name), &fullname).is_some());
    assert!(
        get(
            "role",
            Some(&ns.name),
            &format!("{fullname}-leader-election")
        )
        .is_some()
    );
    assert!(can_i(
        &ns.name,
        &fullname,
        "watch",
        "secrets",
        &watched.name
    ));
    assert!(!can_i(&ns.name, &fullname, "watch", "secrets", &ns.name));
    assert!(can_i(&ns.name, &fullname, "update", "leases", &ns.name));

    run_ok(
        helm().args([
            "uninstall",
            &release,
            "--namespace",
            &ns.name,
            "--wait",
            "--timeout",
            WAIT,
        ]),
        None,
    );
    for (kind, namespace, name) in [
        ("deployment", Some(ns.name.as_str()), fullname.clone()),
        ("serviceaccount", Some(&ns.name), fullname.clone()),
        ("service", Some(&ns.name), format!("{fullname}-metrics")),
        ("role", Some(&watched.name), fullname.clone()),
        ("rolebinding", Some(&watched.name), fullname.clone()),
        (
            "role",
            Some(&ns.name),
            format!("{fullname}-leader-election"),
        ),
        (
            "rolebinding",
            Some(&ns.name),
            format!("{fullname}-leader-election"),
        ),
        ("clusterrole", None, fullname.clone()),
        ("clusterrolebinding", None, fullname.clone()),
    ] {
        assert!(
            get(kind, namespace, &name).is_none(),
            "{kind} {name} left after uninstall"
        );
    }
    // Helm never deletes CRDs (that would delete every bridge).
    assert!(get("crd", None, "mqttkafkabridges.mqttkafka.io").is_some());
}

/// The documented CRD upgrade: `kubectl apply --server-side --force-conflicts`
/// over the installed CRD (whoever installed it) changes it in place and keeps
/// existing bridges.
#[test]
fn crd_upgrade_by_server_side_apply_keeps_bridges() {
    let apply_crd = |yaml: &str| {
        run_ok(
            kubectl().args(["apply", "--server-side", "--force-conflicts", "-f", "-"]),
            Some(yaml),
        )
    };
    let original = std::fs::read_to_string(chart_crd()).unwrap();
    apply_crd(&original);
    run_ok(
        kubectl().args([
            "wait",
            "--for=condition=Established",
            "crd/mqttkafkabridges.mqttkafka.io",
            "--timeout=60s",
        ]),
        None,
    );
    let ns = TempNamespace::new("crd-upgrade");
    let example =
        std::fs::read_to_string(workspace().join("deploy/examples/current-sensor.yaml")).unwrap();
    run_ok(
        kubectl().args(["apply", "-n", &ns.name, "-f", "-"]),
        Some(&example),
    );

    // A "new version" of the CRD: the same with one more label.
    let marker = unique_name("v");
    let changed = original.replacen(
        "metadata:\n  name: mqttkafkabridges.mqttkafka.io\n",
        &format!("metadata:\n  name: mqttkafkabridges.mqttkafka.io\n  labels:\n    mqttkafka.io/test-upgrade: {marker}\n"),
        1,
    );
    assert_ne!(
        changed, original,
        "CRD metadata layout changed; update this test"
    );
    let out = apply_crd(&changed);
    assert!(out.contains("serverside-applied"), "{out}");
    let crd = get("crd", None, "mqttkafkabridges.mqttkafka.io").unwrap();
    assert_eq!(
        crd["metadata"]["labels"]["mqttkafka.io/test-upgrade"],
        marker.as_str()
    );
    assert!(
        get("mqttkafkabridge", Some(&ns.name), "current-sensor").is_some(),
        "bridge survives"
    );

    // Applying the original again removes what it no longer has.
    apply_crd(&original);
    let crd = get("crd", None, "mqttkafkabridges.mqttkafka.io").unwrap();
    assert!(
        crd["metadata"]["labels"]["mqttkafka.io/test-upgrade"].is_null(),
        "label removed"
    );
    assert!(
        get("mqttkafkabridge", Some(&ns.name), "current-sensor").is_some(),
        "bridge survives"
    );
}

/// `kubectl apply --server-side -f deploy/` installs the objects the chart
/// renders, and the operator becomes available in its restricted namespace.
/// The fixed names are shared with anyone applying deploy/ to this control
/// plane, so the install is left in place (re-applying is a no-op).
#[test]
fn plain_manifests_install_the_chart_objects() {
    run_ok(
        kubectl()
            .args(["apply", "--server-side", "--force-conflicts", "-f"])
            .arg(workspace().join("deploy")),
        None,
    );
    wait_available(DEPLOY_NAMESPACE, DEPLOY_RELEASE);
    let rendered = render(DEPLOY_RELEASE, DEPLOY_NAMESPACE, &[]);
    for doc in documents(&rendered) {
        let (kind, namespace, name) = identity(&doc);
        let live = get(
            &kind,
            (!namespace.is_empty()).then_some(namespace.as_str()),
            &name,
        )
        .unwrap_or_else(|| panic!("{kind} {namespace}/{name} not installed by deploy/"));
        if kind == "Deployment" {
            let want =
                serde_json::to_value(&doc["spec"]["template"]["spec"]["containers"][0]["args"])
                    .unwrap();
            assert_eq!(
                live["spec"]["template"]["spec"]["containers"][0]["args"],
                want
            );
        }
    }
}
