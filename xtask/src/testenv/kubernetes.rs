//! The Kubernetes control plane: etcd, kube-apiserver (RBAC on),
//! kube-controller-manager, kube-scheduler and a kwok fake node.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::certs::Pki;
use super::process::{Ready, Server};
use crate::toolchain::Toolchain;

/// Name of the fake node Pods are scheduled to.
pub const NODE_NAME: &str = "kwok-node-0";

pub struct Ports {
    pub etcd_client: u16,
    pub etcd_peer: u16,
    pub apiserver: u16,
    pub controller_manager: u16,
    pub scheduler: u16,
    pub kwok: u16,
}

/// Writes the kubeconfig and token file, and returns the server definitions in start order.
pub fn configure(
    dir: &Path,
    tools: &Toolchain,
    pki: &Pki,
    ports: &Ports,
    vars: &mut BTreeMap<String, String>,
) -> Result<Vec<Server>> {
    std::fs::create_dir_all(dir)?;
    let token = super::random_secret();
    let tokens = dir.join("tokens.csv");
    // token,user,uid,"groups": the admin is in system:masters, which RBAC lets do anything.
    std::fs::write(&tokens, format!("{token},admin,admin,\"system:masters\"\n"))?;
    let kubeconfig = dir.join("admin.kubeconfig");
    let ca = std::fs::read(&pki.ca_cert)?;
    std::fs::write(&kubeconfig, kubeconfig_yaml(ports.apiserver, &ca, &token))?;
    let s = |p: &Path| p.display().to_string();
    let etcd_url = format!("http://127.0.0.1:{}", ports.etcd_client);
    let peer_url = format!("http://127.0.0.1:{}", ports.etcd_peer);

    let etcd = Server {
        name: "etcd".into(),
        program: tools.etcd.clone(),
        args: vec![
            "--name=testenv".into(),
            format!("--data-dir={}", s(&dir.join("etcd"))),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=testenv={peer_url}"),
            // A test store: durability across power loss is not needed, speed is.
            "--unsafe-no-fsync".into(),
            "--quota-backend-bytes=4294967296".into(),
            "--log-level=warn".into(),
        ],
        env: vec![],
        ready: Ready::Ports(vec![ports.etcd_client]),
        stop_timeout_secs: 10,
        pid: None,
    };
    let apiserver = Server {
        name: "apiserver".into(),
        program: tools.kube_apiserver.clone(),
        args: vec![
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={}", ports.apiserver),
            format!("--cert-dir={}", s(&dir.join("apiserver-certs"))),
            format!("--tls-cert-file={}", s(&pki.server_cert)),
            format!("--tls-private-key-file={}", s(&pki.server_key)),
            format!("--client-ca-file={}", s(&pki.ca_cert)),
            // The `kubernetes` Service cannot point at a loopback address; nothing
            // in the test environment reaches the apiserver through it.
            "--endpoint-reconciler-type=none".into(),
            format!("--token-auth-file={}", s(&tokens)),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", s(&pki.sa_pub)),
            format!("--service-account-signing-key-file={}", s(&pki.sa_key)),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ],
        env: vec![],
        ready: Ready::ApiServer {
            kubectl: tools.kubectl.clone(),
            kubeconfig: kubeconfig.clone(),
        },
        stop_timeout_secs: 15,
        pid: None,
    };
    let controller_manager = Server {
        name: "controller-manager".into(),
        program: tools.kube_controller_manager.clone(),
        args: vec![
            format!("--kubeconfig={}", s(&kubeconfig)),
            format!("--authentication-kubeconfig={}", s(&kubeconfig)),
            format!("--authorization-kubeconfig={}", s(&kubeconfig)),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", ports.controller_manager),
            format!("--cert-dir={}", s(&dir.join("controller-manager-certs"))),
            "--leader-elect=false".into(),
            format!("--service-account-private-key-file={}", s(&pki.sa_key)),
            format!("--root-ca-file={}", s(&pki.ca_cert)),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            // Room for the operator benchmark (hundreds of Deployments at once).
            "--kube-api-qps=200".into(),
            "--kube-api-burst=400".into(),
            "--concurrent-deployment-syncs=10".into(),
            "--concurrent-replicaset-syncs=10".into(),
            "--v=1".into(),
        ],
        env: vec![],
        ready: Ready::Ports(vec![ports.controller_manager]),
        stop_timeout_secs: 10,
        pid: None,
    };
    let scheduler = Server {
        name: "scheduler".into(),
        program: tools.kube_scheduler.clone(),
        args: vec![
            format!("--kubeconfig={}", s(&kubeconfig)),
            format!("--authentication-kubeconfig={}", s(&kubeconfig)),
            format!("--authorization-kubeconfig={}", s(&kubeconfig)),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", ports.scheduler),
            format!("--cert-dir={}", s(&dir.join("scheduler-certs"))),
            "--leader-elect=false".into(),
            "--kube-api-qps=200".into(),
            "--kube-api-burst=400".into(),
            "--v=1".into(),
        ],
        env: vec![],
        ready: Ready::Ports(vec![ports.scheduler]),
        stop_timeout_secs: 10,
        pid: None,
    };
    let kwok = Server {
        name: "kwok".into(),
        program: tools.kwok.clone(),
        args: vec![
            format!("--kubeconfig={}", s(&kubeconfig)),
            "--manage-all-nodes=false".into(),
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
            // Fake pods get loopback addresses: the operator asks every
            // running bridge pod for its report, and traffic of tests may go
            // to loopback only (nothing listens there, so it is refused at once).
            "--cidr=127.244.0.0/16".into(),
            "--node-ip=127.0.0.1".into(),
            format!("--server-address=127.0.0.1:{}", ports.kwok),
            "--node-lease-duration-seconds=40".into(),
        ],
        env: vec![],
        ready: Ready::Ports(vec![ports.kwok]),
        stop_timeout_secs: 10,
        pid: None,
    };
    vars.insert("KUBECONFIG".into(), s(&kubeconfig));
    vars.insert(
        "KUBE_APISERVER_URL".into(),
        format!("https://127.0.0.1:{}", ports.apiserver),
    );
    vars.insert("KUBE_NODE_NAME".into(), NODE_NAME.into());
    Ok(vec![etcd, apiserver, controller_manager, scheduler, kwok])
}

fn kubeconfig_yaml(port: u16, ca_pem: &[u8], token: &str) -> String {
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: testenv\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority-data: {ca}\n\
         users:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: testenv\n  context:\n    cluster: testenv\n    user: admin\n    namespace: default\n\
         current-context: testenv\n"
    )
}

/// Registers the fake node and waits until Pods can be scheduled and get a
/// service account (the namespace's default ServiceAccount exists).
pub fn prepare_cluster(tools: &Toolchain, kubeconfig: &Path) -> Result<()> {
    let node = format!(
        r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{NODE_NAME}",
"annotations":{{"kwok.x-k8s.io/node":"fake","node.alpha.kubernetes.io/ttl":"0"}},
"labels":{{"kubernetes.io/hostname":"{NODE_NAME}","kubernetes.io/os":"linux","kubernetes.io/arch":"amd64","type":"kwok"}}}},
"status":{{"allocatable":{{"cpu":"64","memory":"256Gi","pods":"2000"}},"capacity":{{"cpu":"64","memory":"256Gi","pods":"2000"}}}}}}"#
    );
    kubectl_stdin(tools, kubeconfig, &["apply", "-f", "-"], &node)?;
    kubectl(
        tools,
        kubeconfig,
        &[
            "wait",
            "--for=condition=Ready",
            &format!("node/{NODE_NAME}"),
            "--timeout=90s",
        ],
    )?;
    let deadline = Instant::now() + Duration::from_secs(90);
    while kubectl(
        tools,
        kubeconfig,
        &["get", "serviceaccount", "default", "-n", "default"],
    )
    .is_err()
    {
        if Instant::now() > deadline {
            bail!(
                "the default ServiceAccount never appeared: is kube-controller-manager running? (`cargo xtask testenv status`)"
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(())
}

pub fn kubectl(tools: &Toolchain, kubeconfig: &Path, args: &[&str]) -> Result<String> {
    kubectl_stdin(tools, kubeconfig, args, "")
}

fn kubectl_stdin(
    tools: &Toolchain,
    kubeconfig: &Path,
    args: &[&str],
    input: &str,
) -> Result<String> {
    use std::io::Write;
    let mut child = Command::new(&tools.kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("run kubectl")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
