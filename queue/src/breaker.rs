//! The worker's breaker, one per queue: when runs keep reporting that what
//! their tasks need is down ([`TaskError::Unavailable`]: a mail provider
//! refusing the sender), the worker stops taking tasks from that queue for a
//! while, instead of burning the tasks' attempts into the archive. The pause
//! doubles each time a probe finds the dependency still down, up to a cap.
//!
//! ```text
//! closed --(`failures` unavailable runs in a row)--> open --(pause over)--> probing
//!   ^                                                  ^                       |
//!   +------------- a run that was not unavailable -----+---- unavailable ------+
//!                                                   (pause doubled)
//! ```
//!
//! While probing, the queue is given one task at a time: "the next try" is the
//! probe. Any run of the queue that ends otherwise than unavailable (done, or
//! failed for a reason of its own) shows the dependency answers, and closes
//! the breaker. Each process keeps its own breakers: they learn from their
//! own runs, and one process pausing does not stop the others.
//!
//! [`TaskError::Unavailable`]: crate::TaskError::Unavailable

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::TaskId;

/// When a worker stops taking a queue's tasks, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Unavailable runs in a row that open the breaker; 0 never does (each
    /// such task is still handed back without counting an attempt, and taken
    /// again at once: a loop for as long as the dependency is down).
    pub failures: u32,
    /// The first pause.
    pub first_pause: Duration,
    /// The longest pause.
    pub max_pause: Duration,
}

/// What a run's end says of its queue's dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The handler said it was unavailable.
    Down,
    /// The handler ran and the dependency answered (it may still have failed).
    Up,
    /// The run says nothing (already done, handed back, lease lost).
    Silent,
}

/// How many tasks a queue may be given now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Allowance {
    Any,
    /// Probing: one task, the probe.
    One,
    /// Paused, or its probe is still running.
    None,
}

/// A change of a breaker for the server to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// It opened: the queue is paused for `pause`.
    Opened { pause: Duration },
    /// A probe found the dependency still down: paused again, for longer.
    Reopened { pause: Duration },
    /// It closed after `paused_for`.
    Closed { paused_for: Duration },
}

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        since: Instant,
        until: Instant,
        pause: Duration,
    },
    Probing {
        since: Instant,
        pause: Duration,
        probe: Option<TaskId>,
    },
}

/// The breakers of the queues one worker serves.
#[derive(Debug)]
pub(crate) struct Breakers {
    settings: BreakerSettings,
    states: Mutex<HashMap<String, State>>,
}

impl Breakers {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            states: Mutex::default(),
        }
    }

    fn states(&self) -> std::sync::MutexGuard<'_, HashMap<String, State>> {
        // Plain values: a panic elsewhere cannot leave them half-written.
        self.states
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How many tasks `queue` may be given at `now`; a pause that is over
    /// turns into probing here.
    pub fn allowance(&self, queue: &str, now: Instant) -> Allowance {
        let mut states = self.states();
        let Some(state) = states.get_mut(queue) else {
            return Allowance::Any;
        };
        match *state {
            State::Closed { .. } => Allowance::Any,
            State::Open { until, .. } if now < until => Allowance::None,
            State::Open { since, pause, .. } => {
                *state = State::Probing {
                    since,
                    pause,
                    probe: None,
                };
                Allowance::One
            }
            State::Probing { probe: None, .. } => Allowance::One,
            State::Probing { probe: Some(_), .. } => Allowance::None,
        }
    }

    /// `queue` was given `task` while probing: it is the probe.
    pub fn took(&self, queue: &str, task: TaskId) {
        if let Some(State::Probing { probe, .. }) = self.states().get_mut(queue) {
            probe.get_or_insert(task);
        }
    }

    /// A run of `task` from `queue` ended with `verdict` at `now`.
    pub fn ended(
        &self,
        queue: &str,
        task: TaskId,
        verdict: Verdict,
        now: Instant,
    ) -> Option<Change> {
        let s = self.settings;
        let mut states = self.states();
        // Called at the end of every run: a queue never found down gets no
        // entry (and no allocation of its name).
        let state = match states.get_mut(queue) {
            Some(state) => state,
            None if verdict != Verdict::Down => return None,
            None => states
                .entry(queue.to_owned())
                .or_insert(State::Closed { failures: 0 }),
        };
        match (&mut *state, verdict) {
            (State::Closed { failures }, Verdict::Down) => {
                *failures += 1;
                if s.failures == 0 || *failures < s.failures {
                    return None;
                }
                *state = State::Open {
                    since: now,
                    until: now + s.first_pause,
                    pause: s.first_pause,
                };
                Some(Change::Opened {
                    pause: s.first_pause,
                })
            }
            (State::Closed { failures }, Verdict::Up) => {
                *failures = 0;
                None
            }
            // Runs taken before the pause still end during it.
            (State::Open { .. }, Verdict::Down) => None,
            (State::Probing { since, pause, .. }, Verdict::Down) => {
                let pause = (*pause * 2).min(s.max_pause).max(s.first_pause);
                *state = State::Open {
                    since: *since,
                    until: now + pause,
                    pause,
                };
                Some(Change::Reopened { pause })
            }
            (State::Open { since, .. } | State::Probing { since, .. }, Verdict::Up) => {
                let paused_for = now.saturating_duration_since(*since);
                *state = State::Closed { failures: 0 };
                Some(Change::Closed { paused_for })
            }
            (State::Probing { probe, .. }, Verdict::Silent) => {
                // The probe said nothing (handed back at a shutdown, say):
                // the next task probes instead.
                if *probe == Some(task) {
                    *probe = None;
                }
                None
            }
            (_, Verdict::Silent) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const SETTINGS: BreakerSettings = BreakerSettings {
        failures: 3,
        first_pause: Duration::from_secs(5),
        max_pause: Duration::from_secs(12),
    };

    fn id(n: i64) -> TaskId {
        TaskId::from(n)
    }

    #[test]
    fn it_opens_after_failures_in_a_row_and_probes_one_task_at_a_time() {
        let b = Breakers::new(SETTINGS);
        let t0 = Instant::now();
        assert_eq!(b.ended("q", id(1), Verdict::Down, t0), None);
        // A run that reached the dependency resets the count.
        assert_eq!(b.ended("q", id(2), Verdict::Up, t0), None);
        assert_eq!(b.ended("q", id(3), Verdict::Down, t0), None);
        assert_eq!(b.ended("q", id(4), Verdict::Down, t0), None);
        assert_eq!(b.allowance("q", t0), Allowance::Any);
        assert_eq!(
            b.ended("q", id(5), Verdict::Down, t0),
            Some(Change::Opened { pause: 5 * S })
        );
        assert_eq!(b.allowance("q", t0 + 4 * S), Allowance::None);
        assert_eq!(b.allowance("other", t0), Allowance::Any);
        // The pause is over: one probe.
        assert_eq!(b.allowance("q", t0 + 5 * S), Allowance::One);
        b.took("q", id(6));
        assert_eq!(b.allowance("q", t0 + 5 * S), Allowance::None);
        // Still down: paused for twice as long, then capped.
        assert_eq!(
            b.ended("q", id(6), Verdict::Down, t0 + 6 * S),
            Some(Change::Reopened { pause: 10 * S })
        );
        assert_eq!(b.allowance("q", t0 + 15 * S), Allowance::None);
        assert_eq!(b.allowance("q", t0 + 16 * S), Allowance::One);
        b.took("q", id(7));
        assert_eq!(
            b.ended("q", id(7), Verdict::Down, t0 + 17 * S),
            Some(Change::Reopened { pause: 12 * S })
        );
        // Up: closed, every task again.
        assert_eq!(b.allowance("q", t0 + 29 * S), Allowance::One);
        b.took("q", id(8));
        assert_eq!(
            b.ended("q", id(8), Verdict::Up, t0 + 30 * S),
            Some(Change::Closed { paused_for: 30 * S })
        );
        assert_eq!(b.allowance("q", t0 + 30 * S), Allowance::Any);
    }

    #[test]
    fn a_silent_probe_lets_the_next_task_probe() {
        let b = Breakers::new(BreakerSettings {
            failures: 1,
            ..SETTINGS
        });
        let t0 = Instant::now();
        assert!(b.ended("q", id(1), Verdict::Down, t0).is_some());
        assert_eq!(b.allowance("q", t0 + 5 * S), Allowance::One);
        b.took("q", id(2));
        // Another run's silence changes nothing; the probe's frees its place.
        assert_eq!(b.ended("q", id(9), Verdict::Silent, t0 + 5 * S), None);
        assert_eq!(b.allowance("q", t0 + 5 * S), Allowance::None);
        assert_eq!(b.ended("q", id(2), Verdict::Silent, t0 + 5 * S), None);
        assert_eq!(b.allowance("q", t0 + 5 * S), Allowance::One);
    }

    #[test]
    fn zero_failures_never_opens() {
        let b = Breakers::new(BreakerSettings {
            failures: 0,
            ..SETTINGS
        });
        let t0 = Instant::now();
        for n in 0..10 {
            assert_eq!(b.ended("q", id(n), Verdict::Down, t0), None);
        }
        assert_eq!(b.allowance("q", t0), Allowance::Any);
    }
}
