//! The Deployment of one slot (see the module docs of `build` for why one
//! Deployment per slot).

use std::collections::BTreeMap;

use crds::MqttKafkaBridgeSpec;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    HTTPGetAction, KeyToPath, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config::{
    CONFIG_DIR, HOST_NETWORK_HTTP_HOST, SECRETS_DIR, TERMINATION_MESSAGE_PATH, config_key,
};
use sha2::{Digest, Sha256};

use super::{
    BRIDGE_LABEL, BuildSettings, CONFIG_HASH_ANNOTATION, Owner, REVISION_ANNOTATION,
    SECRET_VERSIONS_ANNOTATION, SLOT_LABEL, config_map_name, deployment_name,
};
use crate::resolve::ResolvedSecrets;

/// Environment variable telling bridge-runtime its slot.
pub use bridge_core::rules::SLOT_ENV;
/// Non-root user and group the bridge runs as.
const RUN_AS: i64 = 65532;

/// The Deployment of `slot`.
pub fn deployment(
    owner: &Owner,
    spec: &MqttKafkaBridgeSpec,
    slot: u32,
    config_hash: &str,
    secrets: &ResolvedSecrets,
    settings: &BuildSettings,
) -> Deployment {
    let selector = BTreeMap::from([
        (BRIDGE_LABEL.to_string(), owner.name.clone()),
        (SLOT_LABEL.to_string(), slot.to_string()),
    ]);
    let mut meta = owner.meta(deployment_name(&owner.name, slot));
    meta.labels
        .get_or_insert_with(Default::default)
        .insert(SLOT_LABEL.into(), slot.to_string());

    let template = spec.pod_template();
    let metadata = template.metadata.clone().unwrap_or_default();
    // User labels first so that the operator's (selector) labels win
    // (admission already refuses user labels under mqttkafka.io/).
    let mut pod_labels = metadata.labels;
    pod_labels.extend(owner.labels());
    pod_labels.insert(SLOT_LABEL.into(), slot.to_string());
    let mut pod_annotations = metadata.annotations;
    pod_annotations.insert(CONFIG_HASH_ANNOTATION.into(), config_hash.into());
    pod_annotations.insert(SECRET_VERSIONS_ANNOTATION.into(), secrets.versions.clone());

    let (volumes, mounts) = volumes(&config_map_name(&owner.name, config_hash), secrets);
    let http_port = spec.http_port(slot);
    // With host networking the endpoint listens on the node's loopback: the
    // kubelet, on the node, probes it there.
    let probe_host = template
        .host_network
        .then(|| HOST_NETWORK_HTTP_HOST.to_string());
    let container = Container {
        name: "bridge".into(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| settings.default_image.clone()),
        ),
        args: Some(vec!["run".into()]),
        env: Some(vec![
            EnvVar {
                name: bridge_core::rules::CONFIG_ENV.into(),
                value: Some(format!("{CONFIG_DIR}/{}", config_key(spec, slot))),
                ..Default::default()
            },
            EnvVar {
                name: SLOT_ENV.into(),
                value: Some(slot.to_string()),
                ..Default::default()
            },
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: http_port,
            // Host networking: the port is the node's (the scheduler keeps
            // two pods wanting one port off the same node).
            host_port: template.host_network.then_some(http_port),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        // Ready means connected to both sides; alive means the event loops run.
        readiness_probe: Some(probe("/readyz", 5, 3, probe_host.clone())),
        liveness_probe: Some(probe("/healthz", 10, 6, probe_host)),
        resources: spec.resources.clone(),
        termination_message_path: Some(TERMINATION_MESSAGE_PATH.into()),
        termination_message_policy: Some("File".into()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    };

    let mut deployment = Deployment {
        metadata: meta,
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            // Never two pods of one slot (one client id) at the same time.
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..Default::default()
            }),
            revision_history_limit: Some(3),
            // A slot not Ready this long halts the rollout (`rollout`).
            progress_deadline_seconds: Some(spec.progress_deadline_seconds),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    // The bridge never talks to the Kubernetes API.
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    // Longer than the runtime's own drain period.
                    termination_grace_period_seconds: Some(
                        i64::from(super::config::SHUTDOWN_GRACE_SECONDS) + 15,
                    ),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS),
                        run_as_group: Some(RUN_AS),
                        fs_group: Some(RUN_AS),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    host_network: template.host_network.then_some(true),
                    dns_policy: (template.host_network || template.dns_policy.is_some())
                        .then(|| template.effective_dns_policy().as_str().to_string()),
                    node_selector: non_empty(template.node_selector),
                    tolerations: (!template.tolerations.is_empty()).then_some(template.tolerations),
                    affinity: template.affinity,
                    priority_class_name: template.priority_class_name,
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    stamp_revision(&mut deployment);
    deployment
}

/// Puts the hash of the pod template on the Deployment and its template.
fn stamp_revision(deployment: &mut Deployment) {
    let Some(spec) = deployment.spec.as_mut() else {
        return;
    };
    let revision = serde_json::to_vec(&spec.template)
        .map(|bytes| {
            let digest = Sha256::digest(&bytes);
            digest[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        })
        .unwrap_or_default();
    if let Some(meta) = spec.template.metadata.as_mut() {
        meta.annotations
            .get_or_insert_with(Default::default)
            .insert(REVISION_ANNOTATION.into(), revision.clone());
    }
    deployment
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(REVISION_ANNOTATION.into(), revision);
}

fn non_empty(m: BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!m.is_empty()).then_some(m)
}

fn probe(path: &str, period: i32, failures: i32, host: Option<String>) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            host,
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

/// The configuration volume, one volume per referenced Secret (only the
/// referenced keys, read-only) and a writable `/tmp`.
fn volumes(config_map: &str, secrets: &ResolvedSecrets) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    ];
    let mut mounts = vec![
        VolumeMount {
            name: "config".into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
    ];
    for (i, (secret, keys)) in secrets.keys.iter().enumerate() {
        // Secret names may be longer than a volume name may be.
        let name = format!("secret-{i}");
        volumes.push(Volume {
            name: name.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                items: Some(
                    keys.iter()
                        .map(|k| KeyToPath {
                            key: k.clone(),
                            path: k.clone(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name,
            mount_path: format!("{SECRETS_DIR}/{secret}"),
            read_only: Some(true),
            ..Default::default()
        });
    }
    (volumes, mounts)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::build::{BuildSettings, build};
    use crate::fixtures;

    fn settings() -> BuildSettings {
        BuildSettings {
            default_image: "bridge:default".into(),
        }
    }

    fn resolved() -> ResolvedSecrets {
        ResolvedSecrets {
            versions: "hivemq-credentials=u1/7".into(),
            keys: [
                (
                    "hivemq-credentials".to_string(),
                    BTreeSet::from(["password".to_string()]),
                ),
                (
                    "confluent-credentials".to_string(),
                    BTreeSet::from(["api-secret".to_string()]),
                ),
            ]
            .into(),
        }
    }

    #[test]
    fn one_deployment_per_slot_with_its_slot() {
        let bridge = fixtures::hivemq_confluent();
        let children = build(&fixtures::validated(&bridge, resolved()), &settings()).unwrap();
        assert_eq!(children.deployments.len(), 2);
        for (slot, d) in children.deployments.iter().enumerate() {
            assert_eq!(
                d.metadata.name.as_deref(),
                Some(format!("hivemq-confluent-{slot}").as_str())
            );
            let spec = d.spec.as_ref().unwrap();
            assert_eq!(spec.replicas, Some(1));
            assert_eq!(
                spec.strategy.as_ref().unwrap().type_.as_deref(),
                Some("Recreate")
            );
            let pod = spec.template.spec.as_ref().unwrap();
            let c = &pod.containers[0];
            let env = c.env.as_ref().unwrap();
            assert!(env.iter().any(|e| e.name == "BRIDGE_SLOT"
                && e.value.as_deref() == Some(slot.to_string().as_str())));
            assert_eq!(
                spec.selector.match_labels.as_ref().unwrap()[SLOT_LABEL],
                slot.to_string()
            );
            let owners = d.metadata.owner_references.as_ref().unwrap();
            assert_eq!(owners[0].controller, Some(true));
        }
    }

    #[test]
    fn the_progress_deadline_comes_from_the_spec() {
        let mut bridge = fixtures::hivemq_confluent();
        let deadline = |bridge: &crds::MqttKafkaBridge| {
            build(&fixtures::validated(bridge, resolved()), &settings())
                .unwrap()
                .deployments
                .iter()
                .map(|d| d.spec.as_ref().unwrap().progress_deadline_seconds)
                .collect::<Vec<_>>()
        };
        // The example does not set it: the default.
        assert_eq!(
            deadline(&bridge),
            vec![Some(bridge_core::rules::DEFAULT_PROGRESS_DEADLINE_SECONDS); 2]
        );
        bridge.spec.progress_deadline_seconds = 600;
        assert_eq!(deadline(&bridge), vec![Some(600); 2]);
    }

    #[test]
    fn pod_is_locked_down_and_probed() {
        let bridge = fixtures::hivemq_confluent();
        let d = &build(&fixtures::validated(&bridge, resolved()), &settings())
            .unwrap()
            .deployments[0];
        let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        let c = &pod.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop,
            Some(vec!["ALL".into()])
        );
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/readyz")
        );
        assert_eq!(
            c.termination_message_path.as_deref(),
            Some(TERMINATION_MESSAGE_PATH)
        );
        assert_eq!(c.image.as_deref(), Some("bridge:default"));
        assert!(c.resources.is_some());
        let mounts = c.volume_mounts.as_ref().unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m.mount_path == "/etc/bridge/secrets/hivemq-credentials")
        );
        let annotations = d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap();
        let annotations = annotations.annotations.as_ref().unwrap();
        assert_eq!(
            annotations[SECRET_VERSIONS_ANNOTATION],
            "hivemq-credentials=u1/7"
        );
        assert_eq!(annotations[CONFIG_HASH_ANNOTATION].len(), 64);
    }

    #[test]
    fn template_labels_cannot_override_the_selector() {
        let mut bridge = fixtures::current_sensor();
        let mut template = crds::PodTemplate::default();
        let mut metadata = crds::MetadataTemplate::default();
        metadata
            .labels
            .insert(BRIDGE_LABEL.into(), "someone-else".into());
        metadata.labels.insert("team".into(), "iot".into());
        template.metadata = Some(metadata);
        template.priority_class_name = Some("high".into());
        bridge.spec.template = Some(crds::BridgeTemplate {
            pod: Some(template),
        });
        bridge.spec.image = Some("custom:1".into());
        let d = &build(
            &fixtures::validated(&bridge, ResolvedSecrets::default()),
            &settings(),
        )
        .unwrap()
        .deployments[0];
        let t = &d.spec.as_ref().unwrap().template;
        let labels = t.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        assert_eq!(labels[BRIDGE_LABEL], "current-sensor");
        assert_eq!(labels["team"], "iot");
        let pod = t.spec.as_ref().unwrap();
        assert_eq!(pod.priority_class_name.as_deref(), Some("high"));
        assert_eq!(pod.containers[0].image.as_deref(), Some("custom:1"));
        // No host networking asked for: the pod spec says nothing about it.
        assert_eq!(pod.host_network, None);
        assert_eq!(pod.dns_policy, None);
    }

    #[test]
    fn host_network_pods_get_their_slot_port_probed_on_loopback() {
        let mut bridge = fixtures::sensor_fleet();
        bridge.spec.template = Some(crds::BridgeTemplate {
            pod: Some(crds::PodTemplate {
                host_network: true,
                ..Default::default()
            }),
        });
        bridge.spec.http = Some(crds::HttpSpec { port: 18080 });
        let children = build(
            &fixtures::validated(&bridge, ResolvedSecrets::default()),
            &settings(),
        )
        .unwrap();
        for (slot, d) in children.deployments.iter().enumerate() {
            let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
            assert_eq!(pod.host_network, Some(true));
            assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
            let c = &pod.containers[0];
            let port = &c.ports.as_ref().unwrap()[0];
            let want = 18080 + slot as i32;
            assert_eq!((port.container_port, port.host_port), (want, Some(want)));
            for probe in [&c.readiness_probe, &c.liveness_probe] {
                let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
                assert_eq!(get.host.as_deref(), Some("127.0.0.1"));
            }
            let env = c.env.as_ref().unwrap();
            assert!(env.iter().any(|e| e.name == "BRIDGE_CONFIG"
                && e.value.as_deref()
                    == Some(format!("/etc/bridge/config/bridge-{slot}.yaml").as_str())));
        }
    }
}
