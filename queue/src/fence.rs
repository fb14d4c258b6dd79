//! What a run knows of its own right to go on: the lease, the task's time
//! budget, and the worker's shutdown. A handler calls [`Task::fence`] right
//! before an effect that cannot be undone (an email). The fence renews the
//! lease in Redis (one round trip, which also learns of a lease another
//! delivery took), then passes only when the run will still hold its lease,
//! and still be within its timeout, when the effect is over. No other worker
//! can be handed the task before then, so two runs never both make the
//! effect. A run past its fence is not cut short: not by a lost lease, not
//! by the shutdown's abort (the grace covers an effect).
//!
//! The lease is counted on this process's monotonic clock from when the
//! renewal was sent; Redis counts it on its own clock from when it ran the
//! call, later. A Redis clock stepped forward by more than the lease's
//! margin (a lease is twice the longest effect) can still end a lease early:
//! keep Redis's clock synchronised.
//!
//! [`Task::fence`]: super::Task::fence
//! [`Task::await_outcome`]: super::Task::await_outcome

use crate::TaskId;
use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use super::{Broker, Delivery};

/// Why a run may not go on to its effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    /// The worker is shutting down: the task is handed back, untried.
    Stopping,
    /// The lease is lost, or could run out before the effect is over: another
    /// worker may have the task (or soon will). This run stops, records
    /// nothing, and leaves the task to the lease's holder.
    LeaseLost,
    /// The task's timeout would cut the effect short: tried again later.
    OutOfTime,
}

impl std::fmt::Display for Fenced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Stopping => "the worker is shutting down",
            Self::LeaseLost => "the lease is lost or about to run out",
            Self::OutOfTime => "too little of the task's timeout is left for its effect",
        })
    }
}

/// The run's side of its lease, shared by the run, the lease keeper and the
/// shutdown.
#[derive(Debug)]
pub struct RunGuard {
    /// Until when this process may count on the lease: when the last grant
    /// or extension was *sent*, plus the lease. Redis counts its deadline from
    /// when it *ran* the call, which is later, so this is never past it.
    valid_until: Mutex<Instant>,
    /// When the handler's timeout ends; set when it starts.
    timeout_at: Mutex<Option<Instant>>,
    /// Cancelled when the lease is lost (another delivery holds the task) or
    /// ran out here without an extension.
    lost: CancellationToken,
    /// Cancelled when the worker begins to shut down.
    stopping: CancellationToken,
    /// Set once the run passed its fence: its effect may be under way.
    passed: AtomicBool,
    /// Set once the effect is handed over and the run only waits for its
    /// outcome ([`RunGuard::await_outcome`]); `awaiting_begun` is cancelled
    /// then, to wake whoever waits for it.
    awaiting: AtomicBool,
    awaiting_begun: CancellationToken,
    /// How to renew the lease in Redis (absent in unit tests).
    renewal: Option<Renewal>,
}

/// The lease in Redis: which run, and for how long it is renewed.
pub(crate) struct Renewal {
    pub broker: Broker,
    pub queue: String,
    pub id: TaskId,
    pub delivery: Delivery,
    pub lease: Duration,
}

impl std::fmt::Debug for Renewal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewal")
            .field("queue", &self.queue)
            .field("id", &self.id)
            .field("delivery", &self.delivery)
            .field("lease", &self.lease)
            .finish()
    }
}

impl RunGuard {
    pub(crate) fn new(valid_until: Instant) -> Self {
        Self {
            valid_until: Mutex::new(valid_until),
            timeout_at: Mutex::new(None),
            lost: CancellationToken::new(),
            stopping: CancellationToken::new(),
            passed: AtomicBool::new(false),
            awaiting: AtomicBool::new(false),
            awaiting_begun: CancellationToken::new(),
            renewal: None,
        }
    }

    pub(crate) fn with_renewal(mut self, renewal: Renewal) -> Self {
        self.renewal = Some(renewal);
        self
    }

    /// Whether the run passed its fence (its effect may be under way).
    pub(crate) fn passed(&self) -> bool {
        self.passed.load(Ordering::SeqCst)
    }

    /// Whether the run only waits for the outcome of an effect it handed
    /// over: a shutdown at the end of its grace may abandon it.
    pub(crate) fn awaiting(&self) -> bool {
        self.awaiting.load(Ordering::SeqCst)
    }

    /// The effect is handed over (past the fence); the run now waits up to
    /// `wait` for its outcome. Its timeout is moved to cover that wait, and
    /// the lease keeper goes on extending the lease meanwhile.
    pub(crate) fn await_outcome(&self, wait: Duration) {
        debug_assert!(self.passed(), "an outcome is awaited after the fence");
        let until = Instant::now() + wait;
        let mut timeout_at = Self::lock(&self.timeout_at);
        *timeout_at = Some(timeout_at.map_or(until, |t| t.max(until)));
        self.awaiting.store(true, Ordering::SeqCst);
        self.awaiting_begun.cancel();
    }

    /// Resolves once the run waits for an outcome.
    pub(crate) async fn awaiting_begun(&self) {
        self.awaiting_begun.cancelled().await
    }

    /// When the run's timeout ends (moved by [`RunGuard::await_outcome`]).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        *Self::lock(&self.timeout_at)
    }

    /// The fence: renews the lease, then [`RunGuard::check`]s it.
    pub(crate) async fn fence(&self, effect: Duration) -> Result<(), Fenced> {
        self.check(Duration::ZERO, Instant::now())?;
        if let Some(r) = &self.renewal {
            let sent_at = Instant::now();
            match r
                .broker
                .extend_leases(&r.queue, r.lease, &[(r.id, r.delivery)])
                .await
            {
                Ok((lost, _)) if !lost.is_empty() => {
                    self.lose();
                    return Err(Fenced::LeaseLost);
                }
                Ok((_, None)) => self.extended(sent_at, r.lease),
                // Unreachable, or not acknowledged by the replicas: the
                // lease as last renewed still counts, and the check below
                // holds the run to it.
                Ok((_, Some(_))) | Err(_) => {}
            }
        }
        self.check(effect, Instant::now())?;
        self.passed.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        // Plain values: a panic elsewhere cannot leave them half-written.
        m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An extension sent at `sent_at` succeeded.
    pub(crate) fn extended(&self, sent_at: Instant, lease: Duration) {
        let mut until = Self::lock(&self.valid_until);
        *until = (*until).max(sent_at + lease);
    }

    /// Marks the lease lost: the run stops, unless it passed its fence.
    pub(crate) fn lose(&self) {
        self.lost.cancel();
    }

    /// Loses the lease if it ran out without an extension (Redis unreachable).
    pub(crate) fn lose_if_expired(&self, now: Instant) {
        if *Self::lock(&self.valid_until) <= now {
            self.lose();
        }
    }

    pub(crate) fn stop(&self) {
        self.stopping.cancel();
    }

    pub(crate) fn start_timeout(&self, timeout: Duration) {
        *Self::lock(&self.timeout_at) = Some(Instant::now() + timeout);
    }

    /// Resolves when the lease is lost.
    pub(crate) async fn lost(&self) {
        self.lost.cancelled().await
    }

    /// Whether an effect that takes up to `effect` may begin now.
    pub(crate) fn check(&self, effect: Duration, now: Instant) -> Result<(), Fenced> {
        if self.stopping.is_cancelled() {
            return Err(Fenced::Stopping);
        }
        let over = now + effect;
        if self.lost.is_cancelled() || *Self::lock(&self.valid_until) < over {
            return Err(Fenced::LeaseLost);
        }
        if Self::lock(&self.timeout_at).is_some_and(|t| t < over) {
            return Err(Fenced::OutOfTime);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn an_effect_must_end_within_the_lease_and_the_timeout() {
        let now = Instant::now();
        let guard = RunGuard::new(now + 30 * S);
        assert_eq!(guard.check(10 * S, now), Ok(()));
        assert_eq!(guard.check(31 * S, now), Err(Fenced::LeaseLost));
        guard.extended(now, 60 * S);
        assert_eq!(guard.check(31 * S, now), Ok(()));
        guard.start_timeout(5 * S);
        assert_eq!(guard.check(10 * S, Instant::now()), Err(Fenced::OutOfTime));
        guard.stop();
        assert_eq!(guard.check(S, Instant::now()), Err(Fenced::Stopping));
    }

    #[test]
    fn awaiting_an_outcome_moves_the_timeout_and_never_shortens_it() {
        let guard = RunGuard::new(Instant::now() + 30 * S);
        guard.start_timeout(5 * S);
        let timeout = guard.deadline().unwrap();
        guard.passed.store(true, Ordering::SeqCst);
        guard.await_outcome(60 * S);
        assert!(guard.awaiting());
        assert!(guard.deadline().unwrap() >= timeout + 50 * S);
        let moved = guard.deadline().unwrap();
        guard.await_outcome(Duration::ZERO);
        assert_eq!(guard.deadline(), Some(moved));
    }

    #[test]
    fn a_lease_that_ran_out_here_is_lost() {
        let now = Instant::now();
        let guard = RunGuard::new(now + S);
        guard.lose_if_expired(now);
        assert_eq!(guard.check(Duration::ZERO, now), Ok(()));
        guard.lose_if_expired(now + 2 * S);
        assert_eq!(guard.check(Duration::ZERO, now), Err(Fenced::LeaseLost));
        // An extension sent before the loss does not bring it back.
        guard.extended(now, 60 * S);
        assert_eq!(guard.check(Duration::ZERO, now), Err(Fenced::LeaseLost));
    }
}
