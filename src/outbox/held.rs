//! Queues whose enqueue failed, held back from the relay's claims until their
//! backoff ends: one queue Redis refuses (a broken key, a cluster slot whose
//! master is down) must not stop the rows of the others, and claiming its
//! rows again at once would only fill every batch with rows that fail.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Shared by the relay's lanes.
#[derive(Debug)]
pub(super) struct HeldQueues {
    first_backoff: Duration,
    max_backoff: Duration,
    held: Mutex<HashMap<String, Held>>,
}

#[derive(Debug)]
struct Held {
    until: Instant,
    backoff: Duration,
    /// Whether its failure was logged (then so is its recovery).
    announced: bool,
}

impl HeldQueues {
    pub fn new(first_backoff: Duration, max_backoff: Duration) -> Self {
        Self {
            first_backoff,
            max_backoff: max_backoff.max(first_backoff),
            held: Mutex::default(),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The queues to leave out of a claim now.
    pub fn skipped(&self, now: Instant) -> Vec<String> {
        self.map()
            .iter()
            .filter(|(_, h)| h.until > now)
            .map(|(q, _)| q.clone())
            .collect()
    }

    /// The held queues whose backoff is over: due for another try.
    pub fn due(&self, now: Instant) -> Vec<String> {
        self.map()
            .iter()
            .filter(|(_, h)| h.until <= now)
            .map(|(q, _)| q.clone())
            .collect()
    }

    /// Whether any queue is failing (held now, or due for another try).
    pub fn any(&self) -> bool {
        !self.map().is_empty()
    }

    /// `queue` failed: held back for its next backoff. Returns whether it was
    /// failing already.
    pub fn failed(&self, queue: &str, now: Instant) -> bool {
        let mut map = self.map();
        match map.get_mut(queue) {
            Some(h) => {
                h.backoff = (h.backoff * 2).min(self.max_backoff);
                h.until = now + h.backoff;
                true
            }
            None => {
                map.insert(
                    queue.to_owned(),
                    Held {
                        until: now + self.first_backoff,
                        backoff: self.first_backoff,
                        announced: false,
                    },
                );
                false
            }
        }
    }

    /// Notes that `queue`'s failure was logged.
    pub fn announce(&self, queue: &str) {
        if let Some(h) = self.map().get_mut(queue) {
            h.announced = true;
        }
    }

    /// `queue` took its rows: no longer held. `Some(announced)` when it was.
    pub fn recovered(&self, queue: &str) -> Option<bool> {
        self.map().remove(queue).map(|h| h.announced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_queue_is_held_back_with_growing_backoff() {
        let ms = Duration::from_millis;
        let held = HeldQueues::new(ms(100), ms(300));
        let now = Instant::now();
        assert!(!held.failed("a", now));
        assert_eq!(held.skipped(now), ["a"]);
        assert!(held.skipped(now + ms(100)).is_empty(), "due for a retry");
        assert_eq!(held.due(now + ms(100)), ["a"]);
        assert!(held.due(now).is_empty());
        assert!(held.any());
        assert!(held.failed("a", now));
        assert!(held.failed("a", now));
        assert_eq!(
            held.skipped(now + ms(299)),
            ["a"],
            "backoff capped at 300 ms"
        );
        assert!(held.skipped(now + ms(300)).is_empty());
        held.announce("a");
        assert_eq!(held.recovered("a"), Some(true));
        assert_eq!(held.recovered("a"), None);
        assert!(!held.any());
    }
}
