//! The chart renders valid objects: `helm lint --strict`, a server-side dry
//! run of default and non-default values against the test apiserver, the
//! values schema, and the copies that must not drift (the CRD in the chart,
//! the plain manifests in `deploy/`).

use install_tests::*;

#[test]
fn helm_lint_strict_passes_with_default_and_custom_values() {
    run_ok(
        helm()
            .args(["lint", "--strict", "--kube-version", KUBE_VERSION])
            .arg(chart_dir()),
        None,
    );
    run_ok(
        helm()
            .args(["lint", "--strict", "--kube-version", KUBE_VERSION])
            .arg(chart_dir())
            .arg("-f")
            .arg(values_file("custom.yaml"))
            .args(["--set", "watchNamespace=bridges"]),
        None,
    );
}

/// Regenerate with `UPDATE_CHART_CRD=1 cargo test -p install-tests --test chart`.
#[test]
fn chart_crd_is_the_generated_crd() {
    let generated =
        std::fs::read_to_string(workspace().join("crds/mqttkafkabridges.yaml")).unwrap();
    let copy = chart_dir().join("crds/mqttkafkabridges.yaml");
    if std::env::var_os("UPDATE_CHART_CRD").is_some() {
        std::fs::write(&copy, &generated).unwrap();
    }
    assert!(
        std::fs::read_to_string(&copy).unwrap_or_default() == generated,
        "{} differs from crds/mqttkafkabridges.yaml: run \
         `UPDATE_CHART_CRD=1 cargo test -p install-tests --test chart` and commit it",
        copy.display()
    );
}

#[test]
fn chart_app_version_is_the_crate_version() {
    let chart: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap())
            .unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(version),
        "Chart.yaml appVersion"
    );
    assert_eq!(
        chart["version"].as_str(),
        Some(version),
        "Chart.yaml version"
    );
}

/// Applies `yaml` with a server-side dry run; returns kubectl's stderr
/// (warnings, e.g. Pod Security ones).
fn dry_run(yaml: &str) -> String {
    let out = output(
        kubectl().args(["apply", "--dry-run=server", "-f", "-"]),
        Some(yaml),
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "server-side dry run failed:\n{stderr}\n{yaml}"
    );
    stderr
}

#[test]
fn default_values_pass_a_server_side_dry_run() {
    let ns = TempNamespace::new("chart-default");
    let release = unique_name("mko");
    let yaml = render(&release, &ns.name, &[]);
    let stderr = dry_run(&yaml);
    assert!(
        !stderr.contains("PodSecurity"),
        "restricted Pod Security warnings:\n{stderr}"
    );

    let docs = documents(&yaml);
    let kinds: Vec<_> = docs.iter().map(|d| identity(d).0).collect();
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} missing: {kinds:?}");
    }
    // One replica without election: no Lease rights, no NetworkPolicy, no
    // ServiceMonitor; the monitoring kit is off.
    for kind in [
        "Role",
        "RoleBinding",
        "NetworkPolicy",
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "ConfigMap",
    ] {
        assert!(
            !kinds.iter().any(|k| k == kind),
            "unexpected {kind}: {kinds:?}"
        );
    }
    let deploy = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(deploy["spec"]["replicas"], 1);
    assert_eq!(deploy["spec"]["strategy"]["type"], "Recreate");
    assert_eq!(
        deploy["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"],
        "/readyz"
    );
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        args.contains(&format!("--bridge-image=localhost/mqtt-kafka-bridge:{version}").as_str()),
        "{args:?}"
    );
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--leader-election") || a.starts_with("--namespace")),
        "{args:?}"
    );
    assert_eq!(
        container["image"].as_str(),
        Some(format!("localhost/mqtt-kafka-operator:{version}").as_str())
    );
    assert_rbac_is_least_privilege(&docs);
}

/// No write on Secrets or on the CRD, no wildcards, status only patched.
fn assert_rbac_is_least_privilege(docs: &[serde_yaml::Value]) {
    for role in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
    {
        for rule in role["rules"].as_sequence().unwrap() {
            let list = |k: &str| -> Vec<String> {
                rule[k]
                    .as_sequence()
                    .map(|s| {
                        s.iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let (resources, verbs) = (list("resources"), list("verbs"));
            assert!(
                !resources.contains(&"*".into()) && !verbs.contains(&"*".into()),
                "wildcard: {rule:?}"
            );
            assert!(
                !list("apiGroups").contains(&"apiextensions.k8s.io".into()),
                "CRD access: {rule:?}"
            );
            if resources.contains(&"secrets".into()) {
                assert_eq!(verbs, ["get", "list", "watch"], "Secrets must be read-only");
            }
            if resources.contains(&"mqttkafkabridges/status".into()) {
                assert_eq!(verbs, ["patch"]);
            }
            if resources.contains(&"mqttkafkabridges".into()) {
                assert_eq!(verbs, ["get", "list", "watch"], "bridges are never written");
            }
        }
    }
}

#[test]
fn custom_values_pass_a_server_side_dry_run() {
    let ns = TempNamespace::new("chart-custom");
    let watched = TempNamespace::new("chart-watched");
    // The test control plane has no Prometheus Operator: stand-in CRDs.
    run_ok(
        kubectl()
            .args(["apply", "--server-side", "--force-conflicts", "-f"])
            .arg(values_file("prometheus-operator-crds.yaml")),
        None,
    );
    run_ok(
        kubectl().args([
            "wait",
            "--for=condition=Established",
            "crd/servicemonitors.monitoring.coreos.com",
            "crd/podmonitors.monitoring.coreos.com",
            "crd/prometheusrules.monitoring.coreos.com",
            "--timeout=60s",
        ]),
        None,
    );
    let release = unique_name("mko");
    let watch = format!("watchNamespace={}", watched.name);
    let dashboard_ns = format!("grafanaDashboard.namespace={}", watched.name);
    let values = values_file("custom.yaml");
    let yaml = render(
        &release,
        &ns.name,
        &[
            "-f",
            values.to_str().unwrap(),
            "--set",
            &watch,
            "--set",
            &dashboard_ns,
        ],
    );
    let stderr = dry_run(&yaml);
    assert!(
        !stderr.contains("PodSecurity"),
        "restricted Pod Security warnings:\n{stderr}"
    );

    let docs = documents(&yaml);
    let ids: Vec<_> = docs.iter().map(identity).collect();
    let has = |kind: &str, namespace: &str| ids.iter().any(|(k, n, _)| k == kind && n == namespace);
    // watchNamespace: rights only there; the Lease Role in the release namespace.
    assert!(
        !ids.iter()
            .any(|(k, ..)| k == "ClusterRole" || k == "ClusterRoleBinding"),
        "{ids:?}"
    );
    assert!(
        has("Role", &watched.name) && has("RoleBinding", &watched.name),
        "{ids:?}"
    );
    assert!(
        has("Role", &ns.name) && has("RoleBinding", &ns.name),
        "Lease Role: {ids:?}"
    );
    assert!(
        has("NetworkPolicy", &ns.name) && has("ServiceMonitor", &ns.name),
        "{ids:?}"
    );
    // The monitoring kit: bridges scraped in the watched namespace, the
    // alert rules with the broker's queue limit, the dashboard for
    // Grafana's sidecar in the namespace it watches.
    assert!(
        has("PodMonitor", &ns.name) && has("PrometheusRule", &ns.name),
        "{ids:?}"
    );
    let pod_monitor = docs.iter().find(|d| d["kind"] == "PodMonitor").unwrap();
    assert_eq!(
        pod_monitor["spec"]["namespaceSelector"]["matchNames"][0].as_str(),
        Some(watched.name.as_str())
    );
    let rules = docs.iter().find(|d| d["kind"] == "PrometheusRule").unwrap();
    assert_eq!(rules["metadata"]["labels"]["release"], "prometheus");
    let rules_text = serde_yaml::to_string(&rules["spec"]).unwrap();
    assert!(rules_text.contains("> 0.5 * 1000000"), "{rules_text}");
    let dashboard = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1")
        .unwrap_or_else(|| panic!("no dashboard ConfigMap: {ids:?}"));
    assert_eq!(
        dashboard["metadata"]["namespace"].as_str(),
        Some(watched.name.as_str())
    );
    let json: serde_json::Value = serde_json::from_str(
        dashboard["data"]["mqtt-kafka-bridge.json"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(json["uid"], "mqtt-kafka-bridges");
    assert!(has("ServiceAccount", &ns.name), "{ids:?}");
    let deploy = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(deploy["spec"]["replicas"], 2);
    let spec = &deploy["spec"]["template"]["spec"];
    assert_eq!(spec["serviceAccountName"], "bridge-operator");
    assert_eq!(spec["nodeSelector"]["kubernetes.io/os"], "linux");
    // Standbys are never leaders: probing /readyz would keep them unready.
    assert_eq!(
        spec["containers"][0]["readinessProbe"]["httpGet"]["path"],
        "/healthz"
    );
    let args = serde_yaml::to_string(&spec["containers"][0]["args"]).unwrap();
    for expected in [
        "--leader-election",
        &format!("--namespace={}", watched.name),
        "--log-format=text",
        "--http-address=0.0.0.0:9090",
        "--bridge-image=registry.example.com/iot/mqtt-kafka-bridge:9.9.9",
    ] {
        assert!(args.contains(expected), "{expected} missing in {args}");
    }
    assert_rbac_is_least_privilege(&docs);
}

#[test]
fn wrong_values_fail_with_a_message_naming_the_value() {
    for (set, expected) in [
        // helm names the value by its JSON pointer.
        (
            "replicaCount=two",
            "at '/replicaCount': got string, want integer",
        ),
        (
            "log.format=xml",
            "at '/log/format': value must be one of 'json', 'text'",
        ),
        ("watchNamespace=Not_A_Namespace", "at '/watchNamespace'"),
        ("image.pullPolicy=Sometimes", "at '/image/pullPolicy'"),
        ("metrics.port=70000", "at '/metrics/port'"),
        ("replicaCount=-1", "at '/replicaCount': minimum"),
        (
            "leaderElection=true",
            "at '/leaderElection': got boolean, want object",
        ),
        (
            "alerts.brokerMaxQueuedMessages=many",
            "at '/alerts/brokerMaxQueuedMessages': got string, want integer",
        ),
        (
            "nodeSelecter.disk=ssd",
            "additional properties 'nodeSelecter' not allowed",
        ),
    ] {
        let text = run_err(
            helm().args(["template", "x"]).arg(chart_dir()).args([
                "--kube-version",
                KUBE_VERSION,
                "--set",
                set,
            ]),
            None,
        );
        assert!(
            text.contains("values don't meet the specifications of the schema")
                && text.contains(expected),
            "--set {set}: the error should name {expected}:\n{text}"
        );
    }
}

/// `deploy/` is `helm template` of the chart with default values (plus the
/// namespace `helm install --create-namespace` would create).
/// Regenerate with `UPDATE_MANIFESTS=1 cargo test -p install-tests --test chart`.
#[test]
fn plain_manifests_are_the_rendered_chart() {
    let expected = install_tests::plain_manifests();
    let update = std::env::var_os("UPDATE_MANIFESTS").is_some();
    let mut stale = Vec::new();
    for (file, content) in &expected {
        let path = workspace().join("deploy").join(file);
        if update {
            std::fs::write(&path, content).unwrap();
        }
        if std::fs::read_to_string(&path).unwrap_or_default() != *content {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "{} differ from the chart rendered with default values: run \
         `eval \"$(cargo xtask testenv env)\" && UPDATE_MANIFESTS=1 cargo test -p install-tests --test chart` \
         and commit them",
        stale.join(", ")
    );
}

/// `deploy/monitoring/` holds the chart's alert rules (rendered with default
/// values) and its dashboard. Regenerate with
/// `UPDATE_MANIFESTS=1 cargo test -p install-tests --test chart`.
#[test]
fn monitoring_files_are_the_charts() {
    let update = std::env::var_os("UPDATE_MANIFESTS").is_some();
    let dir = workspace().join("deploy/monitoring");
    if update {
        std::fs::create_dir_all(&dir).unwrap();
    }
    let mut stale = Vec::new();
    for (file, content) in install_tests::monitoring_files() {
        let path = dir.join(file);
        if update {
            std::fs::write(&path, &content).unwrap();
        }
        if std::fs::read_to_string(&path).unwrap_or_default() != content {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "{} differ from the chart: run \
         `eval \"$(cargo xtask testenv env)\" && UPDATE_MANIFESTS=1 cargo test -p install-tests --test chart` \
         and commit them",
        stale.join(", ")
    );
}
