//! In-order release of acknowledgements.
//!
//! MQTT requires PUBACKs in the order the PUBLISHes arrived, and a Kafka
//! offset may be committed only when every record before it is done; but
//! Kafka delivery reports (different partitions) and MQTT acks complete out
//! of order. An [`AckTracker`] is the FIFO between the two: entries complete
//! in any order and are released strictly from the front.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Sequence number of a tracked entry.
pub type Seq = u64;

#[derive(Debug)]
struct Entry<T> {
    item: T,
    /// Outstanding completions (one per record or publish the message became).
    pending: u32,
    since: Instant,
}

/// FIFO of items waiting for completions; see the module documentation.
#[derive(Debug)]
pub struct AckTracker<T> {
    /// Sequence number of the front entry.
    base: Seq,
    entries: VecDeque<Entry<T>>,
}

impl<T> Default for AckTracker<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> AckTracker<T> {
    /// An empty tracker.
    pub fn new() -> Self {
        Self {
            base: 0,
            entries: VecDeque::new(),
        }
    }

    /// Adds an item that needs `pending` completions before release (0: releasable at once).
    pub fn push(&mut self, item: T, pending: u32) -> Seq {
        let seq = self.base + self.entries.len() as Seq;
        self.entries.push_back(Entry {
            item,
            pending,
            since: Instant::now(),
        });
        seq
    }

    /// Records one completion of entry `seq`. Unknown or already released
    /// sequence numbers are ignored (late reports after a reset).
    pub fn complete(&mut self, seq: Seq) {
        let Some(index) = seq.checked_sub(self.base) else {
            return;
        };
        if let Some(entry) = usize::try_from(index)
            .ok()
            .and_then(|i| self.entries.get_mut(i))
        {
            entry.pending = entry.pending.saturating_sub(1);
        }
    }

    /// Adds more outstanding completions to entry `seq` (e.g. a record re-sent).
    pub fn add_pending(&mut self, seq: Seq, more: u32) {
        if let Some(entry) = seq
            .checked_sub(self.base)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.entries.get_mut(i))
        {
            entry.pending += more;
        }
    }

    /// Removes and returns the items at the front that have no outstanding
    /// completions, in arrival order.
    pub fn release(&mut self) -> Vec<T> {
        let mut out = Vec::new();
        while self.entries.front().is_some_and(|e| e.pending == 0) {
            if let Some(e) = self.entries.pop_front() {
                out.push(e.item);
                self.base += 1;
            }
        }
        out
    }

    /// Forgets every entry (connection lost: the broker will redeliver).
    /// Sequence numbers keep increasing so late completions are ignored.
    pub fn clear(&mut self) {
        self.base += self.entries.len() as Seq;
        self.entries.clear();
    }

    /// Entries not yet released.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How long the oldest entry has waited (zero when empty).
    pub fn oldest_age(&self) -> Duration {
        self.entries
            .front()
            .map_or(Duration::ZERO, |e| e.since.elapsed())
    }

    /// The oldest item still waiting.
    pub fn front(&self) -> Option<&T> {
        self.entries.front().map(|e| &e.item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_in_arrival_order_only() {
        let mut t = AckTracker::new();
        let a = t.push('a', 1);
        let b = t.push('b', 1);
        let c = t.push('c', 2);
        t.complete(b);
        assert!(t.release().is_empty(), "b must wait for a");
        t.complete(a);
        assert_eq!(t.release(), vec!['a', 'b']);
        t.complete(c);
        assert!(t.release().is_empty(), "c needs two completions");
        t.complete(c);
        assert_eq!(t.release(), vec!['c']);
        assert!(t.is_empty());
    }

    #[test]
    fn zero_pending_is_released_in_turn() {
        let mut t = AckTracker::new();
        let a = t.push(1, 1);
        t.push(2, 0);
        assert!(t.release().is_empty());
        t.complete(a);
        assert_eq!(t.release(), vec![1, 2]);
    }

    #[test]
    fn completions_after_clear_are_ignored() {
        let mut t = AckTracker::new();
        let a = t.push(1, 1);
        t.clear();
        let b = t.push(2, 1);
        t.complete(a);
        assert!(t.release().is_empty());
        t.complete(b);
        assert_eq!(t.release(), vec![2]);
        t.complete(a);
        t.complete(99);
        assert!(t.release().is_empty());
    }

    #[test]
    fn add_pending_holds_back() {
        let mut t = AckTracker::new();
        let a = t.push(1, 1);
        t.add_pending(a, 1);
        t.complete(a);
        assert!(t.release().is_empty());
        assert_eq!(t.len(), 1);
        t.complete(a);
        assert_eq!(t.release(), vec![1]);
    }

    #[test]
    fn many_out_of_order() {
        let mut t = AckTracker::new();
        let seqs: Vec<_> = (0..1000).map(|i| t.push(i, 1)).collect();
        for s in seqs.iter().rev() {
            t.complete(*s);
        }
        assert_eq!(t.release(), (0..1000).collect::<Vec<_>>());
    }
}
