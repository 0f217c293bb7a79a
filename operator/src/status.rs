//! Step 5: the status, computed from the slot Deployments, their pods and
//! the outcome of the earlier steps. Pure; the controller writes it only
//! when it differs from what is stored.

use crds::{MqttKafkaBridge, MqttKafkaBridgeStatus};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::build::{SLOT_LABEL, pod_selector};
use crate::error::Error;
use crate::observe::PodReport;
use crate::rollout::Rollout;

/// Type of the summary condition.
pub const READY: &str = "Ready";
/// Type of the condition saying whether undeliverable messages are dropped
/// (routes without a dead-letter topic).
pub const MESSAGES_DROPPED: &str = "MessagesDropped";

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

/// Reason of the Ready condition while a change waits for a failing slot.
pub const ROLLOUT_HALTED: &str = "RolloutHalted";

fn failing(pod: &Pod) -> bool {
    failure_message(pod).is_some()
}

/// The Ready condition while a rollout is under way or halted.
pub fn rolling(rollout: &Rollout) -> Option<Readiness> {
    let waiting = |slot: u32, slots: u32| -> String {
        let rest: Vec<String> = (slot + 1..slots).map(|s| s.to_string()).collect();
        if rest.is_empty() {
            String::new()
        } else {
            format!(
                "; slot(s) {} keep running the previous configuration",
                rest.join(", ")
            )
        }
    };
    match rollout {
        Rollout::Complete => None,
        Rollout::Progressing {
            slot,
            slots,
            change,
        } => Some(Readiness::new(
            "False",
            "Progressing",
            format!(
                "rolling out {change}: slot {slot} of 0..{}, one slot at a time{}",
                slots.saturating_sub(1),
                waiting(*slot, *slots)
            ),
        )),
        Rollout::Halted {
            slot,
            slots,
            change,
            failure,
        } => Some(Readiness::new(
            "False",
            ROLLOUT_HALTED,
            format!(
                "rollout of {change} halted at slot {slot}: {failure}{}; fix the spec or the Secret and the rollout resumes",
                waiting(*slot, *slots)
            ),
        )),
    }
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

/// Decides the Ready condition. `reports` are what the running pods say of
/// themselves: they explain an unavailable slot (what refuses messages,
/// what is unreachable).
pub fn readiness(
    desired: i32,
    deployments: &[Deployment],
    pods: &[Pod],
    reports: &[PodReport],
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
        // Summaries without changing figures: the message must not change on
        // every look, or each status write would trigger the next reconcile.
        let refusals: Vec<String> = reports
            .iter()
            .flat_map(|r| {
                r.report
                    .refusals
                    .iter()
                    .map(move |f| format!("pod {}: {}", r.pod, f.summary()))
            })
            .collect();
        if !refusals.is_empty() {
            return Readiness::new("False", "MessagesRefused", refusals.join("; "));
        }
        let said: Vec<String> = reports
            .iter()
            .filter(|r| !r.report.not_ready.is_empty())
            .map(|r| format!("pod {}: {}", r.pod, r.report.not_ready.join(", ")))
            .collect();
        let mut message = format!("no available pod in {}", unavailable.join(", "));
        if !said.is_empty() {
            message = format!("{message} ({})", said.join("; "));
        }
        return Readiness::new("False", "ReplicasUnavailable", message);
    }
    Readiness::new(
        "True",
        "Available",
        format!("{desired} replica(s) rolled out and available"),
    )
}

/// The MessagesDropped condition from the pods' reports; `None` when no pod
/// answered (nothing known: the stored condition stays).
pub fn dropped(reports: &[PodReport]) -> Option<Readiness> {
    if reports.is_empty() {
        return None;
    }
    let dropping: Vec<String> = reports
        .iter()
        .filter_map(|r| {
            let d = r.report.dropped.as_ref()?;
            Some(format!(
                "pod {} dropped undeliverable messages since it started (last: route {}, reason {})",
                r.pod, d.route, d.reason
            ))
        })
        .collect();
    Some(if dropping.is_empty() {
        Readiness::new(
            "False",
            "NoneDropped",
            "no undeliverable message dropped".into(),
        )
    } else {
        Readiness::new(
            "True",
            "UndeliverableDropped",
            format!(
                "{}; give the route a deadLetterTopic to keep them (bridge_messages_dropped_total counts them)",
                dropping.join("; ")
            ),
        )
    })
}

/// A condition from a verdict, keeping `lastTransitionTime` unless the
/// status flips.
fn condition(
    type_: &str,
    r: Readiness,
    previous: Option<&Condition>,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let last_transition_time = match previous {
        Some(p) if p.status == r.status => p.last_transition_time.clone(),
        _ => now.clone(),
    };
    Condition {
        type_: type_.into(),
        status: r.status.into(),
        reason: r.reason,
        message: r.message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// The full status. `lastTransitionTime` is kept unless the condition's
/// status flips, so recomputing an unchanged state yields an equal value.
pub fn compute(
    bridge: &MqttKafkaBridge,
    deployments: &[Deployment],
    pods: &[Pod],
    reports: &[PodReport],
    error: Option<&Error>,
    rollout: &Rollout,
    now: Time,
) -> MqttKafkaBridgeStatus {
    let old = bridge.status.clone().unwrap_or_default();
    let generation = bridge.metadata.generation;
    let desired = bridge.spec.replicas;
    let r = match (error, rolling(rollout)) {
        (None, Some(r)) if r.reason == ROLLOUT_HALTED || !pods.iter().any(failing) => r,
        _ => readiness(desired, deployments, pods, reports, error),
    };
    let sum = |f: fn(&k8s_openapi::api::apps::v1::DeploymentStatus) -> Option<i32>| {
        deployments
            .iter()
            .filter_map(|d| d.status.as_ref().and_then(f))
            .sum::<i32>()
    };
    let ready_replicas = sum(|s| s.ready_replicas);
    let dropped = dropped(reports);
    let mut conditions: Vec<Condition> = old
        .conditions
        .iter()
        .filter(|c| c.type_ != READY && (dropped.is_none() || c.type_ != MESSAGES_DROPPED))
        .cloned()
        .collect();
    conditions.push(condition(READY, r, old.condition(READY), generation, &now));
    if let Some(d) = dropped {
        conditions.push(condition(
            MESSAGES_DROPPED,
            d,
            old.condition(MESSAGES_DROPPED),
            generation,
            &now,
        ));
    }
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
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
        assert_eq!(readiness(2, &ok, &[], &[], None).status, "True");
        assert_eq!(readiness(3, &ok, &[], &[], None).reason, "Progressing");
        assert_eq!(readiness(1, &ok, &[], &[], None).reason, "Progressing");
        let stale = [slot(0, 1, 1, 1), slot(1, 2, 1, 1)];
        assert_eq!(readiness(2, &stale, &[], &[], None).reason, "Progressing");
        let down = [slot(0, 2, 0, 1), slot(1, 2, 1, 1)];
        let r = readiness(2, &down, &[], &[], None);
        assert_eq!(
            (r.status, r.reason.as_str()),
            ("False", "ReplicasUnavailable")
        );
        assert!(r.message.contains("b-0"));
        assert_eq!(readiness(0, &[], &[], &[], None).status, "True");
    }

    #[test]
    fn errors_and_failing_pods_win() {
        let ok = [slot(0, 2, 1, 1)];
        let e = Error::SecretNotFound {
            name: "creds".into(),
            field: "spec.mqtt.authentication.passwordSecret".into(),
        };
        let r = readiness(1, &ok, &[], &[], Some(&e));
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
        let r = readiness(1, &ok, &[failed("File")], &[], None);
        assert_eq!(r.reason, "BridgeFailing");
        assert_eq!(r.message, "pod b-0-abc: MQTT authentication refused");
        // What may be a log tail is not copied into the status.
        let r = readiness(1, &ok, &[failed("FallbackToLogsOnError")], &[], None);
        assert_eq!(r.reason, "BridgeFailing");
        assert_eq!(r.message, "pod b-0-abc: Error");
    }

    #[test]
    fn recomputing_an_unchanged_state_is_equal() {
        let mut bridge = fixtures::current_sensor();
        let ds = [slot(0, 2, 1, 1)];
        let t0 = Time(k8s_openapi::jiff::Timestamp::from_second(1000).unwrap());
        let t1 = Time(k8s_openapi::jiff::Timestamp::from_second(2000).unwrap());
        let first = compute(&bridge, &ds, &[], &[], None, &Rollout::Complete, t0.clone());
        assert_eq!(first.replicas_summary.as_deref(), Some("1/1"));
        assert_eq!(
            first.label_selector.as_deref(),
            Some("mqttkafka.io/bridge=current-sensor")
        );
        let c = first.condition(READY).unwrap();
        assert_eq!(c.observed_generation, Some(3));
        bridge.status = Some(first.clone());
        let second = compute(&bridge, &ds, &[], &[], None, &Rollout::Complete, t1.clone());
        assert_eq!(first, second);
        // A flip moves lastTransitionTime.
        let down = [slot(0, 2, 0, 1)];
        let third = compute(
            &bridge,
            &down,
            &[],
            &[],
            None,
            &Rollout::Complete,
            t1.clone(),
        );
        assert_eq!(third.condition(READY).unwrap().last_transition_time, t1);
    }

    fn report(pod: &str, json: serde_json::Value) -> PodReport {
        PodReport {
            pod: pod.into(),
            report: serde_json::from_value(json).unwrap(),
        }
    }

    #[test]
    fn the_pods_say_why_a_slot_is_unavailable() {
        let down = [slot(0, 2, 0, 1)];
        let refused = report(
            "b-0-x",
            serde_json::json!({"ready": false, "refusals": [{
                "route": "in", "target": "Kafka topic t", "reason": "kafka_topic_authorization_failed",
                "held": 12, "seconds": 40}]}),
        );
        let r = readiness(1, &down, &[], std::slice::from_ref(&refused), None);
        assert_eq!(r.reason, "MessagesRefused");
        assert_eq!(
            r.message,
            "pod b-0-x: route in: Kafka topic t refuses messages (kafka_topic_authorization_failed)"
        );
        // The figures change on every look; the message does not.
        let mut later = refused;
        later.report.refusals[0].held = 500;
        later.report.refusals[0].seconds = 95;
        assert_eq!(readiness(1, &down, &[], &[later], None).message, r.message);
        let unreachable = report(
            "b-0-x",
            serde_json::json!({"ready": false, "notReady": ["kafka not reachable"]}),
        );
        let r = readiness(1, &down, &[], &[unreachable], None);
        assert_eq!(r.reason, "ReplicasUnavailable");
        assert_eq!(
            r.message,
            "no available pod in b-0 (pod b-0-x: kafka not reachable)"
        );
    }

    #[test]
    fn dropped_messages_make_a_condition_that_does_not_churn() {
        let mut bridge = fixtures::current_sensor();
        let ds = [slot(0, 2, 1, 1)];
        let t0 = Time(k8s_openapi::jiff::Timestamp::from_second(1000).unwrap());
        let t1 = Time(k8s_openapi::jiff::Timestamp::from_second(2000).unwrap());
        let quiet = report("b-0-x", serde_json::json!({"ready": true}));
        let first = compute(
            &bridge,
            &ds,
            &[],
            &[quiet],
            None,
            &Rollout::Complete,
            t0.clone(),
        );
        let c = first.condition(MESSAGES_DROPPED).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "NoneDropped")
        );
        bridge.status = Some(first);
        let dropping = |count: u64, ago: u64| {
            report(
                "b-0-x",
                serde_json::json!({"ready": true, "dropped": {
                    "count": count, "route": "in", "reason": "too_large", "secondsAgo": ago}}),
            )
        };
        let second = compute(
            &bridge,
            &ds,
            &[],
            &[dropping(1, 0)],
            None,
            &Rollout::Complete,
            t1.clone(),
        );
        let c = second.condition(MESSAGES_DROPPED).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "UndeliverableDropped")
        );
        assert!(
            c.message.contains("route in, reason too_large"),
            "{}",
            c.message
        );
        assert_eq!(c.last_transition_time, t1);
        assert_eq!(second.condition(READY).unwrap().status, "True");
        bridge.status = Some(second.clone());
        // More drops later: an equal status, so no write and no new reconcile.
        let third = compute(
            &bridge,
            &ds,
            &[],
            &[dropping(40, 3)],
            None,
            &Rollout::Complete,
            t1,
        );
        assert_eq!(third, second);
        // No pod answered: what was known stays.
        let fourth = compute(&bridge, &ds, &[], &[], None, &Rollout::Complete, t0);
        assert_eq!(
            fourth.condition(MESSAGES_DROPPED),
            second.condition(MESSAGES_DROPPED)
        );
    }
}
