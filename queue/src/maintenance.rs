//! The worker's background services, each a loop stopped by a token:
//! - [`promote_due`]: moves due scheduled and retry tasks to pending and
//!   recovers expired leases, sleeping exactly until the next due time;
//! - [`keep_leases`]: extends the leases of the runs this process holds, and
//!   stops a run whose lease is lost (or ran out while Redis was unreachable);
//! - [`listen_for_wakeups`]: turns messages on the queues' wake channels into
//!   local wake-ups of the fetch and promote loops.
//!
//! And the one piece of state they share with the fetch loop: the
//! [`RunningTasks`] of this process.

use crate::TaskId;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use fred::{clients::SubscriberClient, prelude::*};
use tokio::sync::{Notify, broadcast::error::RecvError};
use tokio_util::sync::CancellationToken;

use super::{Broker, Delivery, HandlerRegistry, Task, fence::RunGuard};
use crate::{Observer, RunEnd, outage::Outage};

/// Most tasks moved between sets by one promote script call.
pub(super) const PROMOTE_BATCH: u32 = 1000;
/// The longest the fetch and promote loops sleep without a wake-up.
pub(super) const SAFETY_POLL: Duration = Duration::from_secs(1);

/// One run this process holds.
#[derive(Clone)]
struct Run {
    id: TaskId,
    delivery: Delivery,
    guard: Arc<RunGuard>,
}

type RunMap = HashMap<(String, TaskId), Run>;

/// The runs this process holds, by (queue, id).
#[derive(Default)]
pub(super) struct RunningTasks(Mutex<RunMap>);

impl RunningTasks {
    fn map(&self) -> std::sync::MutexGuard<'_, RunMap> {
        // A panic while holding this lock cannot leave the map half-changed.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn insert(&self, task: &Task) {
        let run = Run {
            id: task.id,
            delivery: task.delivery,
            guard: task.guard.clone(),
        };
        self.map().insert((task.queue.clone(), task.id), run);
    }

    /// Forgets `task`'s run, unless a later delivery of the same task came to
    /// this process meanwhile (its lease expired and it was handed out again):
    /// that run's lease must go on being extended.
    pub fn remove(&self, task: &Task) {
        let mut map = self.map();
        let key = (task.queue.clone(), task.id);
        if map
            .get(&key)
            .is_some_and(|run| run.delivery == task.delivery)
        {
            map.remove(&key);
        }
    }

    /// Tells every run the worker is shutting down: no new effect may begin.
    pub fn stop_all(&self) {
        for run in self.map().values() {
            run.guard.stop();
        }
    }

    /// A snapshot, grouped by queue.
    fn by_queue(&self) -> HashMap<String, Vec<Run>> {
        let mut by_queue: HashMap<String, Vec<Run>> = HashMap::new();
        for ((queue, _), run) in self.map().iter() {
            by_queue.entry(queue.clone()).or_default().push(run.clone());
        }
        by_queue
    }
}

/// Promotes due tasks of `queues` until `shutdown`; woken early by `wake`
/// when due times may have changed.
pub(super) async fn promote_due(
    broker: Broker,
    queues: Vec<String>,
    registry: HandlerRegistry,
    observer: Arc<dyn Observer>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut outage = Outage::new(
        "cannot promote due tasks; retrying",
        "redis reachable again: promoting due tasks",
        Duration::from_millis(100),
        SAFETY_POLL,
    );
    loop {
        let mut next = SAFETY_POLL;
        let mut again = false;
        let mut failed = None;
        for queue in &queues {
            match broker.promote(queue, PROMOTE_BATCH).await {
                Ok(f) => {
                    if f.recovered > 0 {
                        tracing::warn!(queue = %queue, recovered = f.recovered, "recovered tasks whose lease expired");
                    }
                    // Their runs ended with no worker to count them.
                    for (kinds, end) in [
                        (&f.expired_archived, RunEnd::Archived),
                        (&f.expired_retried, RunEnd::Retried),
                    ] {
                        for kind in kinds {
                            observer.lease_expired(registry.label(kind), end);
                        }
                    }
                    again |= f.moved >= u64::from(PROMOTE_BATCH);
                    if let Some(due) = f.next_due {
                        next = next.min(due);
                    }
                }
                // The other queues still get their turn.
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            None => outage.up(),
            Some(e) => next = next.min(outage.down("redis", &e)),
        }
        if again {
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(next) => {}
        }
    }
}

/// Extends the leases of `running` every third of `lease`, until `stop`. A
/// run whose lease another delivery took, or whose lease ran out here
/// because Redis could not be reached to extend it, is stopped: past that
/// point another worker may be running the task.
pub(super) async fn keep_leases(
    broker: Broker,
    lease: Duration,
    running: Arc<RunningTasks>,
    stop: CancellationToken,
) {
    let every = lease / 3;
    let mut outage = Outage::new(
        "cannot extend leases; retrying",
        "redis reachable again: extending leases",
        every,
        every,
    );
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let mut failed = None;
        let by_queue = running.by_queue();
        for (queue, runs) in &by_queue {
            let ids: Vec<_> = runs.iter().map(|r| (r.id, r.delivery)).collect();
            let sent_at = Instant::now();
            match broker.extend_leases(queue, lease, &ids).await {
                Ok((lost, unreplicated)) => {
                    for run in runs {
                        if lost.contains(&run.id) {
                            run.guard.lose();
                        } else if unreplicated.is_none() {
                            run.guard.extended(sent_at, lease);
                        }
                    }
                    if !lost.is_empty() {
                        tracing::warn!(queue = %queue, ?lost, "leases lost: those runs stop");
                    }
                    // The others keep their lease as last acknowledged.
                    if let Some(e) = unreplicated {
                        failed = Some(e);
                    }
                }
                Err(e) => failed = Some(e),
            }
        }
        let now = Instant::now();
        for run in by_queue.values().flatten() {
            run.guard.lose_if_expired(now);
        }
        match failed {
            None => outage.up(),
            Some(e) => {
                outage.down("redis", &e);
            }
        }
    }
}

/// Subscribes to the wake `channels` and wakes the fetch loop (new pending
/// tasks) and the promote loop (due times changed), until `stop`.
pub(super) async fn listen_for_wakeups(
    subscriber: SubscriberClient,
    channels: Vec<String>,
    fetch: Arc<Notify>,
    promote: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut messages = subscriber.message_rx();
    // The client re-subscribes after a reconnect only to channels it once
    // subscribed to, so the first subscribe is retried until it succeeds;
    // meanwhile the safety poll keeps tasks moving.
    let mut outage = Outage::new(
        "cannot subscribe to wake-ups; polling meanwhile",
        "subscribed to wake-ups",
        Duration::from_millis(100),
        SAFETY_POLL * 5,
    );
    loop {
        match subscriber.subscribe(channels.clone()).await {
            Ok(()) => {
                outage.up();
                break;
            }
            Err(e) => {
                if outage.pause("redis", &e, &stop).await.is_break() {
                    return;
                }
            }
        }
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            msg = messages.recv() => match msg {
                Ok(msg) => {
                    // "0": only due times changed, nothing new is pending.
                    if msg.value.as_str().is_none_or(|v| v != "0") {
                        fetch.notify_one();
                    }
                    promote.notify_one();
                }
                Err(RecvError::Lagged(_)) => {
                    fetch.notify_one();
                    promote.notify_one();
                }
                Err(RecvError::Closed) => break,
            },
        }
    }
    let _ = subscriber.unsubscribe_all().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: i64, delivery: u64) -> Task {
        Task {
            id: TaskId::from(id),
            kind: "k".into(),
            queue: "default".into(),
            payload: "{}".into(),
            attempt: 1,
            max_retry: 0,
            timeout: Duration::from_secs(1),
            delivery: Delivery(delivery),
            request_id: None,
            created_at: None,
            process_at: None,
            trace_context: None,
            first_hand_out: true,
            guard: Arc::new(RunGuard::new(Instant::now() + Duration::from_secs(30))),
        }
    }

    #[test]
    fn an_earlier_run_finishing_keeps_the_later_delivery_leased() {
        let running = RunningTasks::default();
        running.insert(&run(7, 1));
        // The lease of delivery 1 expired; the task came back to this process.
        running.insert(&run(7, 2));
        running.remove(&run(7, 1));
        let left: Vec<_> = running.by_queue()["default"]
            .iter()
            .map(|r| (r.id, r.delivery))
            .collect();
        assert_eq!(
            left,
            [(TaskId::from(7), Delivery(2))],
            "delivery 2 still has its lease extended"
        );
        running.remove(&run(7, 2));
        assert!(running.by_queue().is_empty());
    }
}
