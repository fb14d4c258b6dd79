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

    /// The held queues at `now`, in one look (another lane may fail a queue
    /// meanwhile): those to leave out of a claim, and those whose backoff is
    /// over, due for another try.
    pub fn split(&self, now: Instant) -> (Vec<String>, Vec<String>) {
        let (mut skipped, mut due) = (Vec::new(), Vec::new());
        for (queue, held) in self.map().iter() {
            match held.until > now {
                true => skipped.push(queue.clone()),
                false => due.push(queue.clone()),
            }
        }
        (skipped, due)
    }

    /// Whether any queue is failing (held now, or due for another try).
    pub fn any(&self) -> bool {
        !self.map().is_empty()
    }

    /// Whether `queue` is failing.
    pub fn is_held(&self, queue: &str) -> bool {
        self.map().contains_key(queue)
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
        let (skipped, due) = held.split(now);
        assert_eq!((skipped, due), (vec!["a".to_owned()], vec![]));
        let (skipped, due) = held.split(now + ms(100));
        assert!(skipped.is_empty(), "due for a retry");
        assert_eq!(due, ["a"]);
        assert!(held.any());
        assert!(held.failed("a", now));
        assert!(held.failed("a", now));
        assert_eq!(
            held.split(now + ms(299)).0,
            ["a"],
            "backoff capped at 300 ms"
        );
        assert!(held.split(now + ms(300)).0.is_empty());
        held.announce("a");
        assert_eq!(held.recovered("a"), Some(true));
        assert_eq!(held.recovered("a"), None);
        assert!(!held.any());
    }
}
