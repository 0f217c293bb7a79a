//! Step 4a: which slot Deployments to apply now, so a change reaches the
//! slots one at a time. Pure: decided from the Deployments as built and as
//! they run, and the slots' pods.
//!
//! Slot 0 gets the new pod template first; the next slot only once every
//! slot before it runs the new template and is Ready (the bridge's own
//! `/readyz`: connected, subscribed, topics present). A rolled slot whose pod
//! crashes, or that is not Ready within the Deployment's progress deadline,
//! halts the rollout: the slots after it keep running the previous
//! configuration (their ConfigMap stays), and a fix of the spec or Secret
//! gives slot 0 a newer template, which resumes the rollout. Slots that do
//! not exist yet are created at once: nothing runs there to protect.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::build::{
    CONFIG_HASH_ANNOTATION, REVISION_ANNOTATION, SECRET_VERSIONS_ANNOTATION, SLOT_LABEL,
};
use crate::status::{failure_message, rolled_out};

/// Where a bridge's rollout stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rollout {
    /// Every slot runs the current template.
    Complete,
    /// `slot` is being rolled (or waits to become Ready); later slots wait.
    Progressing {
        /// The slot being rolled.
        slot: u32,
        /// Slots in all.
        slots: u32,
        /// What changed, in words.
        change: String,
    },
    /// `slot` runs the new template and fails; later slots keep the
    /// previous one until a fix.
    Halted {
        /// The failing slot.
        slot: u32,
        /// Slots in all.
        slots: u32,
        /// What changed, in words.
        change: String,
        /// Why the slot counts as failed (the pod's termination message).
        failure: String,
    },
}

/// What to apply now and where the rollout stands.
#[derive(Clone, Debug)]
pub struct RolloutPlan {
    /// The Deployments to apply: slots already on the new template (a hand
    /// edit is undone), the slot whose turn it is, and new slots.
    pub apply: Vec<Deployment>,
    /// Where the rollout stands after these applies.
    pub state: Rollout,
}

/// The slot of a Deployment or pod, from its label.
pub fn slot_of<K: ResourceExt>(obj: &K) -> Option<u32> {
    obj.labels().get(SLOT_LABEL).and_then(|s| s.parse().ok())
}

fn revision(d: &Deployment) -> Option<&str> {
    d.annotations().get(REVISION_ANNOTATION).map(String::as_str)
}

fn template_annotation<'a>(d: &'a Deployment, key: &str) -> Option<&'a str> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// Decides which of `desired` (slot 0 first) to apply, given the slot
/// Deployments `live` and the bridge's `pods`.
pub fn plan(desired: &[Deployment], live: &[Deployment], pods: &[Pod]) -> RolloutPlan {
    let live: BTreeMap<u32, &Deployment> =
        live.iter().filter_map(|d| Some((slot_of(d)?, d))).collect();
    let slots = u32::try_from(desired.len()).unwrap_or(u32::MAX);
    // A slot still on the previous template, to say what changed.
    let previous = desired.iter().find_map(|want| {
        let have = live.get(&slot_of(want)?)?;
        (revision(have) != revision(want)).then_some(*have)
    });
    let mut apply = Vec::new();
    let mut state = Rollout::Complete;
    for want in desired {
        let Some(slot) = slot_of(want) else { continue };
        let Some(have) = live.get(&slot) else {
            apply.push(want.clone());
            continue;
        };
        if !matches!(state, Rollout::Complete) {
            // Waiting for an earlier slot: keep running what it runs.
            continue;
        }
        let change = || describe_change(previous.unwrap_or(have), want);
        if revision(have) != revision(want) {
            apply.push(want.clone());
            state = Rollout::Progressing {
                slot,
                slots,
                change: change(),
            };
            continue;
        }
        apply.push(want.clone());
        // Ready, or no change under way (every slot on this template): a
        // slot that is down then is a matter of the status, not of a rollout.
        if rolled_out(have) || previous.is_none() {
            continue;
        }
        state = match slot_failure(have, pods, revision(want)) {
            Some(failure) => Rollout::Halted {
                slot,
                slots,
                change: change(),
                failure,
            },
            None => Rollout::Progressing {
                slot,
                slots,
                change: change(),
            },
        };
    }
    RolloutPlan { apply, state }
}

/// Why a slot on the new template counts as failed, if it does: its pod
/// crashed (restarted, or cannot start), or it missed the Deployment's
/// progress deadline.
fn slot_failure(have: &Deployment, pods: &[Pod], want: Option<&str>) -> Option<String> {
    let slot = slot_of(have);
    let new_pods = pods.iter().filter(|p| {
        slot_of(*p) == slot
            && p.annotations().get(REVISION_ANNOTATION).map(String::as_str) == want
            && p.metadata.deletion_timestamp.is_none()
    });
    for pod in new_pods {
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref());
        let crashed = statuses.into_iter().flatten().any(|c| {
            !c.ready
                && (c.restart_count > 0
                    || c.state
                        .as_ref()
                        .and_then(|s| s.waiting.as_ref())
                        .and_then(|w| w.reason.as_deref())
                        .is_some_and(|r| CANNOT_START.contains(&r)))
        });
        if crashed {
            let name = pod.name_any();
            let waiting = statuses.into_iter().flatten().find_map(|c| {
                let w = c.state.as_ref()?.waiting.as_ref()?;
                Some(format!(
                    "pod {name}: {}",
                    w.message.as_deref().or(w.reason.as_deref())?
                ))
            });
            return failure_message(pod)
                .or(waiting)
                .or_else(|| Some(format!("pod {name} restarted")));
        }
    }
    let deadline_missed = have
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| {
            c.type_ == "Progressing"
                && c.status == "False"
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        });
    deadline_missed.then(|| {
        let seconds = have
            .spec
            .as_ref()
            .and_then(|s| s.progress_deadline_seconds)
            .map(|d| format!(" of {d} s (spec.progressDeadlineSeconds)"))
            .unwrap_or_default();
        format!(
            "Deployment {} not Ready within its progress deadline{seconds}",
            have.name_any()
        )
    })
}

/// Waiting reasons of a container that will not start without a change.
const CANNOT_START: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// What differs between the template a slot runs and the one it gets:
/// the configuration (by hash), which Secrets, or else the pod template.
pub fn describe_change(from: &Deployment, to: &Deployment) -> String {
    let mut parts = Vec::new();
    let (a, b) = (
        template_annotation(from, CONFIG_HASH_ANNOTATION),
        template_annotation(to, CONFIG_HASH_ANNOTATION),
    );
    if a != b {
        let short = |h: Option<&str>| h.map_or("none".to_owned(), |h| h.chars().take(10).collect());
        parts.push(format!("configuration {} → {}", short(a), short(b)));
    }
    let secrets = |d: &Deployment| -> BTreeMap<String, String> {
        template_annotation(d, SECRET_VERSIONS_ANNOTATION)
            .unwrap_or_default()
            .split(',')
            .filter_map(|e| e.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    };
    let (old, new) = (secrets(from), secrets(to));
    let changed: Vec<&str> = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, _)| k.as_str())
        .collect();
    if !changed.is_empty() {
        parts.push(format!("Secret {}", changed.join(", ")));
    }
    if parts.is_empty() {
        parts.push("pod template".into());
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentSpec, DeploymentStatus};
    use k8s_openapi::api::core::v1::{
        Container, ContainerState, ContainerStateTerminated, ContainerStatus, PodSpec, PodStatus,
        PodTemplateSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn deployment(slot: u32, rev: &str, config: &str, ready: bool) -> Deployment {
        let annotations = BTreeMap::from([
            (REVISION_ANNOTATION.to_string(), rev.to_string()),
            (CONFIG_HASH_ANNOTATION.to_string(), config.to_string()),
            (
                SECRET_VERSIONS_ANNOTATION.to_string(),
                "creds=u/1".to_string(),
            ),
        ]);
        Deployment {
            metadata: ObjectMeta {
                name: Some(format!("b-{slot}")),
                labels: Some(BTreeMap::from([(SLOT_LABEL.into(), slot.to_string())])),
                annotations: Some(annotations.clone()),
                generation: Some(2),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(1),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        annotations: Some(annotations),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec::default()),
                },
                ..Default::default()
            }),
            status: Some(DeploymentStatus {
                observed_generation: Some(2),
                replicas: Some(1),
                updated_replicas: Some(1),
                available_replicas: Some(i32::from(ready)),
                ..Default::default()
            }),
        }
    }

    fn crashed_pod(slot: u32, rev: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(format!("b-{slot}-x")),
                labels: Some(BTreeMap::from([(SLOT_LABEL.into(), slot.to_string())])),
                annotations: Some(BTreeMap::from([(
                    REVISION_ANNOTATION.to_string(),
                    rev.to_string(),
                )])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "bridge".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "bridge".into(),
                    ready: false,
                    restart_count: 2,
                    last_state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: 1,
                            message: Some("MqttRefused: bad user name or password".into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn slots(plan: &RolloutPlan) -> Vec<u32> {
        plan.apply.iter().filter_map(slot_of).collect()
    }

    #[test]
    fn a_change_goes_to_slot_0_first() {
        let live: Vec<_> = (0..3).map(|s| deployment(s, "old", "c1", true)).collect();
        let want: Vec<_> = (0..3).map(|s| deployment(s, "new", "c2", false)).collect();
        let p = plan(&want, &live, &[]);
        assert_eq!(slots(&p), vec![0]);
        assert_eq!(
            p.state,
            Rollout::Progressing {
                slot: 0,
                slots: 3,
                change: "configuration c1 → c2".into()
            }
        );
    }

    #[test]
    fn the_next_slot_rolls_once_the_earlier_ones_are_ready() {
        let live = vec![
            deployment(0, "new", "c2", true),
            deployment(1, "new", "c2", false),
            deployment(2, "old", "c1", true),
        ];
        let want: Vec<_> = (0..3).map(|s| deployment(s, "new", "c2", false)).collect();
        let p = plan(&want, &live, &[]);
        assert_eq!(slots(&p), vec![0, 1], "slot 2 waits for slot 1");
        assert!(matches!(p.state, Rollout::Progressing { slot: 1, .. }));

        let live = vec![
            deployment(0, "new", "c2", true),
            deployment(1, "new", "c2", true),
            deployment(2, "old", "c1", true),
        ];
        let p = plan(&want, &live, &[]);
        assert_eq!(slots(&p), vec![0, 1, 2]);
        assert!(matches!(p.state, Rollout::Progressing { slot: 2, .. }));

        let live: Vec<_> = (0..3).map(|s| deployment(s, "new", "c2", true)).collect();
        assert_eq!(plan(&want, &live, &[]).state, Rollout::Complete);
    }

    #[test]
    fn a_crashing_slot_halts_the_rollout_and_a_fix_resumes_it() {
        let mut live = vec![
            deployment(0, "new", "c1", false),
            deployment(1, "old", "c1", true),
            deployment(2, "old", "c1", true),
        ];
        for d in &mut live[1..] {
            if let Some(a) = d
                .spec
                .as_mut()
                .and_then(|s| s.template.metadata.as_mut())
                .and_then(|m| m.annotations.as_mut())
            {
                a.insert(SECRET_VERSIONS_ANNOTATION.into(), "creds=u/0".into());
            }
        }
        let want: Vec<_> = (0..3).map(|s| deployment(s, "new", "c1", false)).collect();
        let pods = vec![crashed_pod(0, "new")];
        let p = plan(&want, &live, &pods);
        assert_eq!(slots(&p), vec![0]);
        match &p.state {
            Rollout::Halted {
                slot: 0,
                change,
                failure,
                ..
            } => {
                assert_eq!(change, "Secret creds");
                assert!(failure.contains("bad user name or password"), "{failure}");
            }
            other => panic!("{other:?}"),
        }
        // The fix: a newer template for slot 0.
        let fixed: Vec<_> = (0..3)
            .map(|s| deployment(s, "fixed", "c1", false))
            .collect();
        let p = plan(&fixed, &live, &pods);
        assert_eq!(slots(&p), vec![0]);
        assert!(matches!(p.state, Rollout::Progressing { slot: 0, .. }));
    }

    #[test]
    fn a_missed_progress_deadline_halts() {
        let mut slot0 = deployment(0, "new", "c2", false);
        if let Some(s) = slot0.status.as_mut() {
            s.conditions = Some(vec![DeploymentCondition {
                type_: "Progressing".into(),
                status: "False".into(),
                reason: Some("ProgressDeadlineExceeded".into()),
                ..Default::default()
            }]);
        }
        if let Some(s) = slot0.spec.as_mut() {
            s.progress_deadline_seconds = Some(30);
        }
        let live = vec![slot0, deployment(1, "old", "c1", true)];
        let want: Vec<_> = (0..2).map(|s| deployment(s, "new", "c2", false)).collect();
        let p = plan(&want, &live, &[]);
        match &p.state {
            // The status says which deadline and where it is set.
            Rollout::Halted {
                slot: 0, failure, ..
            } => assert!(
                failure.ends_with(
                    "not Ready within its progress deadline of 30 s (spec.progressDeadlineSeconds)"
                ),
                "{failure}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn new_slots_are_created_at_once() {
        let want: Vec<_> = (0..3).map(|s| deployment(s, "new", "c2", false)).collect();
        let p = plan(&want, &[], &[]);
        assert_eq!(slots(&p), vec![0, 1, 2]);
        assert_eq!(p.state, Rollout::Complete);
    }
}
