//! Step 5: the status, computed from the slot Deployments, their pods and
//! the outcome of the earlier steps. Pure; the controller writes it only
//! when it differs from what is stored.

use crds::{MqttKafkaBridge, MqttKafkaBridgeStatus};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::build::{SLOT_LABEL, pod_selector};
use crate::error::Error;

/// Type of the summary condition.
pub const READY: &str = "Ready";

/// The Ready condition's status, reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    /// `True`, `False` or `Unknown`.
    pub status: &'static str,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable detail (never a secret value).
    pub message: String,
}

impl Readiness {
    fn new(status: &'static str, reason: &str, message: String) -> Self {
        Self {
            status,
            reason: reason.into(),
            message,
        }
    }
}

/// Whether a slot Deployment runs the current template with its pod available.
pub fn rolled_out(d: &Deployment) -> bool {
    let (Some(spec), Some(status)) = (&d.spec, &d.status) else {
        return false;
    };
    let want = spec.replicas.unwrap_or(1);
    d.metadata.generation.is_some()
        && status.observed_generation == d.metadata.generation
        && status.updated_replicas.unwrap_or(0) == want
        && status.available_replicas.unwrap_or(0) == want
        && status.replicas.unwrap_or(0) == want
}

/// A pod's termination message, when its bridge container failed.
///
/// The message is taken only from a container whose policy is `File`: it is
/// then what bridge-runtime wrote for users. Under `FallbackToLogsOnError`
/// (pods of an older operator version) it can be the tail of the log, which
/// is not written for a status or an event, so only the reason is used.
pub fn failure_message(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    status.container_statuses.iter().flatten().find_map(|c| {
        if c.ready {
            return None;
        }
        let terminated = c
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .or_else(|| c.last_state.as_ref().and_then(|s| s.terminated.as_ref()))?;
        let written_for_users = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|k| k.name == c.name))
            .is_some_and(|k| k.termination_message_policy.as_deref().unwrap_or("File") == "File");
        let message = terminated
            .message
            .as_deref()
            .filter(|_| written_for_users)
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .or(terminated.reason.as_deref())?;
        let pod_name = pod.metadata.name.as_deref().unwrap_or("?");
        Some(format!("pod {pod_name}: {message}"))
    })
}

/// Decides the Ready condition.
pub fn readiness(
    desired: i32,
    deployments: &[Deployment],
    pods: &[Pod],
    error: Option<&Error>,
) -> Readiness {
    if let Some(e) = error {
        return Readiness::new("False", e.reason(), e.to_string());
    }
    let slots = |d: &&Deployment| {
        d.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SLOT_LABEL))
            .and_then(|s| s.parse::<i32>().ok())
    };
    let current: Vec<&Deployment> = deployments
        .iter()
        .filter(|d| slots(d).is_some_and(|s| s < desired))
        .collect();
    if let Some(message) = pods.iter().find_map(failure_message) {
        return Readiness::new("False", "BridgeFailing", message);
    }
    let missing = usize::try_from(desired)
        .unwrap_or(0)
        .saturating_sub(current.len());
    let extra = deployments.len() - current.len();
    let behind: Vec<&str> = current
        .iter()
        .filter(|d| {
            d.status.as_ref().and_then(|s| s.observed_generation) != d.metadata.generation
                || d.status
                    .as_ref()
                    .and_then(|s| s.updated_replicas)
                    .unwrap_or(0)
                    < d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
                || d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0)
                    > d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
        })
        .filter_map(|d| d.metadata.name.as_deref())
        .collect();
    if missing > 0 || extra > 0 || !behind.is_empty() {
        let mut parts = Vec::new();
        if missing > 0 {
            parts.push(format!("{missing} slot Deployment(s) not created yet"));
        }
        if extra > 0 {
            parts.push(format!("{extra} slot Deployment(s) being removed"));
        }
        if !behind.is_empty() {
            parts.push(format!("rolling out {}", behind.join(", ")));
        }
        return Readiness::new("False", "Progressing", parts.join("; "));
    }
    let unavailable: Vec<&str> = current
        .iter()
        .filter(|d| !rolled_out(d))
        .filter_map(|d| d.metadata.name.as_deref())
        .collect();
    if !unavailable.is_empty() {
        return Readiness::new(
            "False",
            "ReplicasUnavailable",
            format!("no available pod in {}", unavailable.join(", ")),
        );
    }
    Readiness::new(
        "True",
        "Available",
        format!("{desired} replica(s) rolled out and available"),
    )
}

/// The full status. `lastTransitionTime` is kept unless the condition's
/// status flips, so recomputing an unchanged state yields an equal value.
pub fn compute(
    bridge: &MqttKafkaBridge,
    deployments: &[Deployment],
    pods: &[Pod],
    error: Option<&Error>,
    now: Time,
) -> MqttKafkaBridgeStatus {
    let old = bridge.status.clone().unwrap_or_default();
    let generation = bridge.metadata.generation;
    let desired = bridge.spec.replicas;
    let r = readiness(desired, deployments, pods, error);
    let previous = old.condition(READY);
    let last_transition_time = match previous {
        Some(p) if p.status == r.status => p.last_transition_time.clone(),
        _ => now,
    };
    let sum = |f: fn(&k8s_openapi::api::apps::v1::DeploymentStatus) -> Option<i32>| {
        deployments
            .iter()
            .filter_map(|d| d.status.as_ref().and_then(f))
            .sum::<i32>()
    };
    let ready_replicas = sum(|s| s.ready_replicas);
    let mut conditions: Vec<Condition> = old
        .conditions
        .iter()
        .filter(|c| c.type_ != READY)
        .cloned()
        .collect();
    conditions.push(Condition {
        type_: READY.into(),
        status: r.status.into(),
        reason: r.reason,
        message: r.message,
        observed_generation: generation,
        last_transition_time,
    });
    MqttKafkaBridgeStatus {
        observed_generation: generation,
        replicas: sum(|s| s.replicas),
        ready_replicas,
        replicas_summary: Some(format!("{ready_replicas}/{desired}")),
        label_selector: bridge.metadata.name.as_deref().map(pod_selector),
        conditions,
    }
}

/// Now, rounded to seconds as the apiserver stores it.
pub fn now() -> Time {
    let ts = k8s_openapi::jiff::Timestamp::now();
    Time(k8s_openapi::jiff::Timestamp::from_second(ts.as_second()).unwrap_or(ts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
    use k8s_openapi::api::core::v1::{
        Container, ContainerState, ContainerStateTerminated, ContainerStatus, PodSpec, PodStatus,
    };
    use kube::api::ObjectMeta;

    fn slot(n: u32, observed: i64, available: i32, updated: i32) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some(format!("b-{n}")),
                generation: Some(2),
                labels: Some([(SLOT_LABEL.to_string(), n.to_string())].into()),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(1),
                ..Default::default()
            }),
            status: Some(DeploymentStatus {
                observed_generation: Some(observed),
                replicas: Some(1),
                updated_replicas: Some(updated),
                available_replicas: Some(available),
                ready_replicas: Some(available),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn ready_only_when_every_slot_is_rolled_out_and_available() {
        let ok = [slot(0, 2, 1, 1), slot(1, 2, 1, 1)];
        assert_eq!(readiness(2, &ok, &[], None).status, "True");
        assert_eq!(readiness(3, &ok, &[], None).reason, "Progressing");
        assert_eq!(readiness(1, &ok, &[], None).reason, "Progressing");
        let stale = [slot(0, 1, 1, 1), slot(1, 2, 1, 1)];
        assert_eq!(readiness(2, &stale, &[], None).reason, "Progressing");
        let down = [slot(0, 2, 0, 1), slot(1, 2, 1, 1)];
        let r = readiness(2, &down, &[], None);
        assert_eq!(
            (r.status, r.reason.as_str()),
            ("False", "ReplicasUnavailable")
        );
        assert!(r.message.contains("b-0"));
        assert_eq!(readiness(0, &[], &[], None).status, "True");
    }

    #[test]
    fn errors_and_failing_pods_win() {
        let ok = [slot(0, 2, 1, 1)];
        let e = Error::SecretNotFound {
            name: "creds".into(),
            field: "spec.mqtt.authentication.passwordSecret".into(),
        };
        let r = readiness(1, &ok, &[], Some(&e));
        assert_eq!((r.status, r.reason.as_str()), ("False", "SecretNotFound"));
        assert!(r.message.contains("creds"));

        let failed = |policy: &str| Pod {
            metadata: ObjectMeta {
                name: Some("b-0-abc".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "bridge".into(),
                    termination_message_policy: Some(policy.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "bridge".into(),
                    ready: false,
                    last_state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: 1,
                            message: Some("MQTT authentication refused\n".into()),
                            reason: Some("Error".into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        };
        let r = readiness(1, &ok, &[failed("File")], None);
        assert_eq!(r.reason, "BridgeFailing");
        assert_eq!(r.message, "pod b-0-abc: MQTT authentication refused");
        // What may be a log tail is not copied into the status.
        let r = readiness(1, &ok, &[failed("FallbackToLogsOnError")], None);
        assert_eq!(r.reason, "BridgeFailing");
        assert_eq!(r.message, "pod b-0-abc: Error");
    }

    #[test]
    fn recomputing_an_unchanged_state_is_equal() {
        let mut bridge = fixtures::current_sensor();
        let ds = [slot(0, 2, 1, 1)];
        let t0 = Time(k8s_openapi::jiff::Timestamp::from_second(1000).unwrap());
        let t1 = Time(k8s_openapi::jiff::Timestamp::from_second(2000).unwrap());
        let first = compute(&bridge, &ds, &[], None, t0.clone());
        assert_eq!(first.replicas_summary.as_deref(), Some("1/1"));
        assert_eq!(
            first.label_selector.as_deref(),
            Some("mqttkafka.io/bridge=current-sensor")
        );
        let c = first.condition(READY).unwrap();
        assert_eq!(c.observed_generation, Some(3));
        bridge.status = Some(first.clone());
        let second = compute(&bridge, &ds, &[], None, t1.clone());
        assert_eq!(first, second);
        // A flip moves lastTransitionTime.
        let down = [slot(0, 2, 0, 1)];
        let third = compute(&bridge, &down, &[], None, t1.clone());
        assert_eq!(third.condition(READY).unwrap().last_transition_time, t1);
    }
}
