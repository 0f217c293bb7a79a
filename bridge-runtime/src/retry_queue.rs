//! Messages a side refused or failed to take, held per target (a Kafka topic,
//! a Kafka partition) in arrival order until they are sent again.
//!
//! Why per target: a refused topic (missing ACL, not created yet) must not
//! hold back the traffic of other topics longer than the in-order
//! acknowledgement rule forces, and per-key order must survive a retry —
//! while a target holds records, later records for it queue behind them
//! instead of overtaking ([`RetryQueue::is_holding`]).
//!
//! Each target backs off on its own: capped exponential delays with jitter
//! (backon), reset when the target takes a record again.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

use crate::delivery::Verdict;

/// First retry delay of a target.
pub const FIRST_RETRY: Duration = Duration::from_millis(500);
/// Longest retry delay of a target.
pub const MAX_RETRY: Duration = Duration::from_secs(10);

/// The capped, jittered delays between retries of one target.
pub fn retry_backoff() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(FIRST_RETRY)
        .with_max_delay(MAX_RETRY)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

#[derive(Debug)]
struct Target<T> {
    /// Held items by arrival order.
    items: BTreeMap<u64, T>,
    backoff: ExponentialBackoff,
    due: Instant,
    verdict: Verdict,
    since: Instant,
    /// What the caller says about the target (the route), for `/readyz`.
    context: String,
}

/// Held items per target; see the module documentation.
#[derive(Debug)]
pub struct RetryQueue<T> {
    targets: HashMap<String, Target<T>>,
    len: usize,
}

impl<T> Default for RetryQueue<T> {
    fn default() -> Self {
        Self {
            targets: HashMap::new(),
            len: 0,
        }
    }
}

/// A target that refuses or fails, for `/readyz` and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holding {
    /// The target.
    pub target: String,
    /// What the caller said about it (the route).
    pub context: String,
    /// The last verdict.
    pub verdict: Verdict,
    /// When the target started failing.
    pub since: Instant,
    /// Items held.
    pub held: usize,
}

impl<T> RetryQueue<T> {
    /// Holds `item` (arrival number `order`) for `target`, which just failed
    /// with `verdict`. A target that is not yet failing waits its first
    /// delay; one whose held items were all sent again waits its next delay.
    pub fn hold(
        &mut self,
        target: &str,
        context: &str,
        order: u64,
        item: T,
        verdict: Verdict,
        now: Instant,
    ) {
        match self.targets.get_mut(target) {
            Some(t) => {
                if t.items.is_empty() {
                    t.due = now + t.backoff.next().unwrap_or(MAX_RETRY);
                }
                t.verdict = verdict;
                if t.items.insert(order, item).is_none() {
                    self.len += 1;
                }
            }
            None => {
                let mut backoff = retry_backoff();
                let due = now + backoff.next().unwrap_or(FIRST_RETRY);
                let mut items = BTreeMap::new();
                items.insert(order, item);
                self.len += 1;
                self.targets.insert(
                    target.to_owned(),
                    Target {
                        items,
                        backoff,
                        due,
                        verdict,
                        since: now,
                        context: context.to_owned(),
                    },
                );
            }
        }
    }

    /// Whether `target` holds items: later items for it must queue behind
    /// them ([`RetryQueue::push_behind`]) to keep their order.
    pub fn is_holding(&self, target: &str) -> bool {
        !self.targets.is_empty()
            && self
                .targets
                .get(target)
                .is_some_and(|t| !t.items.is_empty())
    }

    /// Queues an item that was never sent behind the held items of `target`.
    pub fn push_behind(&mut self, target: &str, order: u64, item: T) {
        if let Some(t) = self.targets.get_mut(target)
            && t.items.insert(order, item).is_none()
        {
            self.len += 1;
        }
    }

    /// Takes, per target whose delay is over, its items in arrival order.
    /// The target stays known (with its backoff) until it takes a record.
    pub fn take_due(&mut self, now: Instant) -> Vec<(String, Vec<T>)> {
        let mut out = Vec::new();
        for (name, t) in &mut self.targets {
            if !t.items.is_empty() && t.due <= now {
                let items: Vec<T> = std::mem::take(&mut t.items).into_values().collect();
                self.len -= items.len();
                out.push((name.clone(), items));
            }
        }
        out
    }

    /// `target` took a record: its backoff starts over. Returns whether it
    /// had been failing (so its refusal can be cleared from `/readyz`).
    pub fn succeeded(&mut self, target: &str) -> bool {
        if self.targets.is_empty() {
            return false;
        }
        match self.targets.get_mut(target) {
            Some(t) if t.items.is_empty() => {
                self.targets.remove(target);
                true
            }
            Some(t) => {
                // Items failed again meanwhile: try them soon.
                t.backoff = retry_backoff();
                t.due = Instant::now();
                true
            }
            None => false,
        }
    }

    /// Forgets everything (connection lost: the broker redelivers).
    pub fn clear(&mut self) {
        self.targets.clear();
        self.len = 0;
    }

    /// Items held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is held or failing.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The failing targets, for `/readyz`.
    pub fn holdings(&self) -> Vec<Holding> {
        let mut out: Vec<Holding> = self
            .targets
            .iter()
            .map(|(name, t)| Holding {
                target: name.clone(),
                context: t.context.clone(),
                verdict: t.verdict,
                since: t.since,
                held: t.items.len(),
            })
            .collect();
        out.sort_by(|a, b| a.target.cmp(&b.target));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFUSED: Verdict = Verdict::Refused("kafka_topic_missing");

    #[test]
    fn held_items_come_back_in_arrival_order_after_their_delay() {
        let mut q = RetryQueue::default();
        let t0 = Instant::now();
        q.hold("a", "r", 3, "a3", REFUSED, t0);
        q.hold("a", "r", 1, "a1", REFUSED, t0);
        assert!(q.is_holding("a"));
        q.push_behind("a", 7, "a7");
        assert!(!q.is_holding("b"), "other targets flow");
        assert_eq!(q.len(), 3);
        assert!(q.take_due(t0).is_empty(), "not before the first delay");
        let due = q.take_due(t0 + MAX_RETRY);
        assert_eq!(due, vec![("a".to_owned(), vec!["a1", "a3", "a7"])]);
        assert_eq!(q.len(), 0);
        assert!(!q.is_holding("a"), "sent again: new items go straight out");
    }

    #[test]
    fn delays_grow_until_the_target_takes_a_record() {
        let mut q = RetryQueue::default();
        let mut now = Instant::now();
        let mut delays = Vec::new();
        for order in 0..12 {
            q.hold("t", "r", order, (), REFUSED, now);
            let mut step = Duration::from_millis(0);
            loop {
                if !q.take_due(now + step).is_empty() {
                    break;
                }
                step += Duration::from_millis(50);
            }
            delays.push(step);
            now += step;
        }
        assert!(delays[0] <= FIRST_RETRY * 2, "{delays:?}");
        assert!(delays[5] > delays[0], "backoff grows: {delays:?}");
        assert!(
            delays
                .iter()
                .all(|d| *d <= MAX_RETRY + Duration::from_millis(50) + MAX_RETRY),
            "capped: {delays:?}"
        );
        assert!(q.succeeded("t"));
        assert!(q.is_empty());
        assert!(!q.succeeded("t"));
    }

    #[test]
    fn holdings_name_target_and_verdict() {
        let mut q = RetryQueue::default();
        let now = Instant::now();
        q.hold("b", "r", 0, (), REFUSED, now);
        q.hold(
            "a",
            "r",
            1,
            (),
            Verdict::Transient("kafka_delivery_timeout"),
            now,
        );
        let h = q.holdings();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].target, "a");
        assert_eq!(h[1].verdict, REFUSED);
        q.clear();
        assert!(q.holdings().is_empty());
        assert_eq!(q.len(), 0);
    }
}
