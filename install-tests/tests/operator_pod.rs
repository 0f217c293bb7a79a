//! The operator as a pod of the chart, from the operator image, on the test
//! environment's real node: `helm install --wait` returns once the kubelet's
//! probe of the operator's own `/readyz` passes, and the operator, with the
//! chart's ServiceAccount token the kubelet projected, reconciles a bridge
//! whose pod runs on the same node to Ready.
//!
//! The node has no pod network and the test apiserver listens on loopback
//! only, with no kube-proxy behind the `kubernetes` Service: so the pod uses
//! the host network (`hostNetwork`), listens on 127.0.0.1 only
//! (`metrics.address`) and reaches the apiserver at 127.0.0.1
//! (`apiServer.host`/`port`) — the chart values made for such nodes.

use install_tests::*;

/// Removes the private image store however the test ends.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_chart_runs_the_operator_as_a_pod_on_the_real_node() {
    let ns = TempNamespace::for_real_node("op-pod");
    let watched = TempNamespace::for_real_node("op-pod-br");
    let release = unique_name("mko");
    let storage = TempDir(std::env::temp_dir().join(format!("mkb-op-{}", std::process::id())));
    images_into_the_real_node("install-pod", &storage.0);

    let api = var("KUBE_APISERVER_URL");
    let (host, port) = api
        .trim_start_matches("https://")
        .rsplit_once(':')
        .expect("KUBE_APISERVER_URL is https://host:port");
    let values = serde_json::json!({
        "image": {"repository": "localhost/mqtt-kafka-operator", "tag": "install-pod"},
        "bridgeImage": {"repository": "localhost/mqtt-kafka-bridge", "tag": "install-pod"},
        "watchNamespace": watched.name,
        "hostNetwork": true,
        "metrics": {"address": "127.0.0.1", "port": free_port()},
        "apiServer": {"host": host, "port": port},
        "nodeSelector": {"kubernetes.io/hostname": var("REAL_NODE")},
        "tolerations": [{"key": var("REAL_NODE_TAINT"), "operator": "Exists", "effect": "NoSchedule"}],
    });
    let values_file = storage.0.with_extension("values.json");
    std::fs::write(&values_file, values.to_string()).unwrap();
    let install = output(
        helm()
            .args(["install", &release])
            .arg(chart_dir())
            .args(["--namespace", &ns.name, "-f"])
            .arg(&values_file)
            .args(["--wait", "--timeout", WAIT]),
        None,
    );
    let _ = std::fs::remove_file(&values_file);
    let operator_pods = || {
        run_ok(
            kubectl().args([
                "get",
                "pods",
                "-n",
                &ns.name,
                "-o",
                "jsonpath={range .items[*]}{.spec.nodeName} {.status.containerStatuses[0].ready} {.status.containerStatuses[0].restartCount}{\"\\n\"}{end}",
            ]),
            None,
        )
    };
    let logs = || {
        String::from_utf8_lossy(
            &output(
                kubectl().args([
                    "logs",
                    "-n",
                    &ns.name,
                    "-l",
                    "app.kubernetes.io/name=mqtt-kafka-operator",
                    "--tail=20",
                ]),
                None,
            )
            .stdout,
        )
        .into_owned()
    };
    assert!(
        install.status.success(),
        "helm install --wait: {}\npods: {}\nlogs:\n{}",
        String::from_utf8_lossy(&install.stderr),
        operator_pods(),
        logs()
    );
    assert_eq!(
        operator_pods().trim(),
        format!("{} true 0", var("REAL_NODE")),
        "the operator pod runs Ready on the real node"
    );

    let bridge = current_sensor_on_the_real_node(&watched.name, free_port());
    run_ok(
        kubectl().args(["apply", "-n", &watched.name, "-f", "-"]),
        Some(&bridge),
    );
    let ready = wait_bridge_ready(&watched.name, "current-sensor");
    assert!(
        ready.status.success(),
        "bridge not Ready: {}\noperator log:\n{}",
        String::from_utf8_lossy(&ready.stderr),
        logs()
    );
    run_ok(
        kubectl().args([
            "delete",
            "mkb",
            "current-sensor",
            "-n",
            &watched.name,
            "--wait=true",
        ]),
        None,
    );
    run_ok(
        helm().args(["uninstall", &release, "--namespace", &ns.name, "--wait"]),
        None,
    );
}
