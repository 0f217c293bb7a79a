//! The operator binary, authenticated with a token of the chart's
//! ServiceAccount (not admin), reconciles an example bridge to Ready — its pod
//! running on the test environment's real node from the bridge image, Ready
//! through the kubelet's probe; what the chart's RBAC does not grant (writing
//! a Secret) is denied. The operator is a local process here, so that the
//! test can use the very same token for `kubectl` and show what it may not
//! do; `operator_pod.rs` runs it as a pod of the chart.

use std::process::{Child, Command, Stdio};

use install_tests::*;

/// Kills the operator when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Holds the token's kubeconfig; removed however the test ends.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A kubeconfig for the test apiserver that authenticates with `token` only.
fn token_kubeconfig(token: &str, path: &std::path::Path) {
    let admin: serde_json::Value = serde_json::from_str(&run_ok(
        kubectl().args(["config", "view", "--raw", "--minify", "-o", "json"]),
        None,
    ))
    .unwrap();
    let cluster = admin["clusters"][0]["cluster"].clone();
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testenv", "cluster": cluster}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "testenv", "user": "operator"}}],
        "current-context": "operator",
    });
    std::fs::write(path, serde_json::to_vec(&config).unwrap()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

#[test]
fn operator_with_the_chart_service_account_reconciles_a_bridge() {
    let ns = TempNamespace::for_real_node("sa-token");
    // The bridge image from the test binaries, imported into the node's
    // containerd (a private store: vfs layers are full copies).
    let storage = TempDir(std::env::temp_dir().join(format!("mkb-it-{}", std::process::id())));
    images_into_the_real_node("install-test", &storage.0);
    let release = unique_name("mko");
    let sa = format!("{release}-mqtt-kafka-operator");
    // The chart's defaults (ClusterRole), with no in-cluster replica: the
    // operator under test is the local process.
    run_ok(
        helm().args(["install", &release]).arg(chart_dir()).args([
            "--namespace",
            &ns.name,
            "--set",
            "replicaCount=0",
        ]),
        None,
    );
    let token = run_ok(
        kubectl().args(["create", "token", &sa, "-n", &ns.name, "--duration=15m"]),
        None,
    );
    let dir = TempDir(std::env::temp_dir().join(unique_name("install-tests-sa")));
    std::fs::create_dir_all(&dir.0).unwrap();
    let dir = &dir.0;
    let kubeconfig = dir.join("kubeconfig");
    token_kubeconfig(token.trim(), &kubeconfig);
    let as_operator = || {
        let mut cmd = Command::new(var("KUBECTL"));
        cmd.env("KUBECONFIG", &kubeconfig);
        cmd
    };
    let whoami = run_ok(
        as_operator().args([
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ]),
        None,
    );
    assert_eq!(whoami, format!("system:serviceaccount:{}:{sa}", ns.name));

    let log_path = dir.join("operator.log");
    let log = std::fs::File::create(&log_path).unwrap();
    // Confined to the test namespace so it never touches other tests' bridges.
    let _operator = Running(
        Command::new(cargo_bin("operator"))
            .args([
                "--bridge-image=localhost/mqtt-kafka-bridge:install-test",
                "--http-address=127.0.0.1:0",
                "--log-format=text",
                &format!("--namespace={}", ns.name),
            ])
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the operator"),
    );

    let bridge = current_sensor_on_the_real_node(&ns.name, free_port());
    run_ok(
        kubectl().args(["apply", "-n", &ns.name, "-f", "-"]),
        Some(&bridge),
    );
    let ready = wait_bridge_ready(&ns.name, "current-sensor");
    assert!(
        ready.status.success(),
        "bridge not Ready: {}\noperator log:\n{}",
        String::from_utf8_lossy(&ready.stderr),
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    assert!(get("deployment", Some(&ns.name), "current-sensor-0").is_some());
    let pods = run_ok(
        kubectl().args([
            "get",
            "pods",
            "-n",
            &ns.name,
            "-l",
            "mqttkafka.io/bridge=current-sensor",
            "-o",
            "jsonpath={range .items[*]}{.spec.nodeName} {.status.containerStatuses[0].ready}{\"\\n\"}{end}",
        ]),
        None,
    );
    assert_eq!(
        pods.trim(),
        format!("{} true", var("REAL_NODE")),
        "the bridge pod runs on the real node"
    );

    // What the role does not grant is refused to the same credentials.
    let denied = run_err(
        as_operator().args([
            "create",
            "secret",
            "generic",
            "not-allowed",
            "-n",
            &ns.name,
            "--from-literal=k=v",
        ]),
        None,
    );
    assert!(denied.contains("forbidden"), "{denied}");
    let denied = run_err(
        as_operator().args([
            "delete",
            "crd",
            "mqttkafkabridges.mqttkafka.io",
            "--dry-run=server",
        ]),
        None,
    );
    assert!(denied.contains("forbidden"), "{denied}");

    drop(_operator);
    run_ok(
        helm().args(["uninstall", &release, "--namespace", &ns.name]),
        None,
    );
}
