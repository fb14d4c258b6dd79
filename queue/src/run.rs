//! One run of a task, from the ledger check to the outcome recorded in Redis.
//!
//! 1. Already in the ledger? Acknowledge without running.
//! 2. Run the handler under its timeout, raced against the lease (a lost lease
//!    stops the run) and the worker's abort (handed back). A handler calls
//!    [`Task::fence`] before an effect that cannot be undone; past it, the run
//!    is let finish.
//! 3. Success: record it in the ledger, outside the timeout and again until it
//!    succeeds (the effect happened; a retry would repeat it), then
//!    acknowledge, again until Redis answers. If the lease was lost meanwhile
//!    and the promoter moved the task on (to retry, or to the archive as
//!    "lease expired"), mark it completed there too, so Redis does not
//!    contradict the ledger.
//! 4. Failure: retry later or archive. Fenced at shutdown: handed back.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use super::{
    AckOutcome, Broker, FailOutcome, Fenced, RequeueOutcome, RetryPolicy, TaskError,
    ack::Acker,
    handler::{Handler, Ledger, Processed, run_handler},
    task::Task,
};
use crate::{Observer, RunEnd, RunEnded, breaker::Verdict, outage::Outage};

/// The longest one attempt to record a run in the ledger may take before it
/// is tried again.
const LEDGER_CALL_LIMIT: Duration = Duration::from_secs(5);

/// What a run needs besides the task.
pub(super) struct RunContext<'a> {
    pub broker: &'a Broker,
    pub acker: &'a Acker,
    pub ledger: Option<&'a dyn Ledger>,
    pub retry: RetryPolicy,
    pub done_retention: Duration,
    /// Cancelled when the shutdown grace is over.
    pub abort: &'a CancellationToken,
    pub observer: &'a dyn Observer,
}

/// What became of one run.
enum Outcome {
    Done(Processed),
    /// In the ledger already: acknowledged, not run.
    AlreadyDone,
    Failed(TaskError),
    HandedBack,
    /// What the task needs is down: handed back without counting an attempt.
    Unavailable(anyhow::Error),
    /// Another delivery has the task (or will): nothing to record.
    LeaseLost,
}

/// Runs `task` with `handler` (none: no handler for its kind), records the
/// outcome, and says what it showed of the queue's dependency (for the
/// breaker).
pub(super) async fn run(
    task: &Task,
    handler: Option<Arc<dyn Handler>>,
    cx: &RunContext<'_>,
) -> Verdict {
    let started = Instant::now();
    // Metrics are labelled by kinds the worker knows: a kind enqueued by
    // hand under any name adds one series, not one per name.
    let kind = match handler {
        Some(_) => task.kind.as_str(),
        None => super::handler::UNREGISTERED,
    };
    let outcome = execute(task, handler, cx).await;
    let verdict = match &outcome {
        Outcome::Unavailable(_) => Verdict::Down,
        Outcome::Done(_) | Outcome::Failed(_) => Verdict::Up,
        Outcome::AlreadyDone | Outcome::HandedBack | Outcome::LeaseLost => Verdict::Silent,
    };
    let took = started.elapsed();
    if let Some(end) = record(task, outcome, took, cx).await {
        cx.observer.run_ended(&RunEnded {
            id: task.id,
            kind,
            end,
            took,
            due_at: task.due_at(),
        });
    }
    verdict
}

async fn execute(task: &Task, handler: Option<Arc<dyn Handler>>, cx: &RunContext<'_>) -> Outcome {
    if let Some(ledger) = cx.ledger {
        match ledger.is_done(task).await {
            Ok(true) => return Outcome::AlreadyDone,
            Ok(false) => {}
            Err(e) => return Outcome::Failed(TaskError::Retry(e.context("reading the ledger"))),
        }
    }
    let Some(handler) = handler else {
        return Outcome::Failed(TaskError::skip_retry(anyhow::anyhow!(
            "no handler is registered for task kind {:?}",
            task.kind
        )));
    };
    // A lost lease or the end of the shutdown grace stops the run, unless
    // it passed its fence: an effect under way is let finish (its lease and
    // the grace both cover it). A run that only waits for the outcome of an
    // effect it handed over is abandoned at the end of the grace: its
    // handler recorded the hand-over, for the next delivery to judge.
    let handling = run_handler(handler.as_ref(), task);
    tokio::pin!(handling);
    let guard = &task.guard;
    let result = loop {
        // The conditions are read each time round: a branch enabled before
        // the fence may fire after it, so what fired is judged again below,
        // and the wait for an outcome starting wakes the loop to enable the
        // abort.
        let stop = tokio::select! {
            biased;
            result = &mut handling => break result,
            _ = cx.abort.cancelled(), if !guard.passed() || guard.awaiting() => Outcome::HandedBack,
            _ = guard.lost(), if !guard.passed() => Outcome::LeaseLost,
            _ = guard.awaiting_begun(), if guard.passed() && !guard.awaiting() => continue,
        };
        let applies = match stop {
            // The grace is over: a run that has not begun its effect, or
            // only waits for its outcome, stops; one handing it over goes on.
            Outcome::HandedBack => !guard.passed() || guard.awaiting(),
            // Past the fence a lost lease changes nothing: the run goes on.
            _ => !guard.passed(),
        };
        if !applies {
            continue;
        }
        if guard.awaiting() {
            tracing::warn!(
                "shutdown grace over while waiting for the outcome of an effect: abandoned, for the next delivery to judge"
            );
        }
        return stop;
    };
    match result {
        Ok(processed) => Outcome::Done(processed),
        Err(TaskError::Fenced(Fenced::Stopping)) => Outcome::HandedBack,
        Err(TaskError::Fenced(Fenced::LeaseLost)) => Outcome::LeaseLost,
        Err(TaskError::Unavailable(e)) => Outcome::Unavailable(e),
        Err(e) => Outcome::Failed(e),
    }
}

/// Records `outcome` in the ledger and Redis; returns how the run ended for
/// the metrics (nothing for a run that did not end here).
async fn record(
    task: &Task,
    outcome: Outcome,
    took: Duration,
    cx: &RunContext<'_>,
) -> Option<RunEnd> {
    let took_ms = took.as_millis() as u64;
    match outcome {
        Outcome::Done(processed) => {
            if let Some(ledger) = cx.ledger
                && !mark_done(ledger, task, cx.abort).await
            {
                return None;
            }
            tracing::info!(r#type = %task.kind, payload = %task.payload, took_ms, fields = %processed, "processed task");
            acknowledge(task, cx).await;
            Some(RunEnd::Processed)
        }
        Outcome::AlreadyDone => {
            tracing::info!("task already completed: acknowledged without running it again");
            acknowledge(task, cx).await;
            None
        }
        Outcome::Failed(error) => {
            let skip = matches!(error, TaskError::SkipRetry(_));
            let delay = match error {
                TaskError::RetryAfter { delay, .. } => delay,
                _ => cx.retry.delay(task.attempt - 1),
            };
            match cx.broker.fail(task, &error.to_string(), delay, skip).await {
                Ok(FailOutcome::Retry { at }) => {
                    tracing::warn!(r#type = %task.kind, payload = %task.payload, error = %error, retry_in_ms = delay.as_millis() as u64, retry_at = %at, "task failed; will retry");
                    Some(RunEnd::Retried)
                }
                Ok(FailOutcome::Archived) => {
                    tracing::error!(r#type = %task.kind, payload = %task.payload, error = %error, "task failed; archived");
                    Some(RunEnd::Archived)
                }
                Ok(FailOutcome::LeaseLost) => {
                    lease_lost("failed");
                    None
                }
                // The lease runs out and the promoter counts the attempt.
                Err(e) => {
                    tracing::error!(error = %e, task_error = %error, "could not record the failure of the task");
                    None
                }
            }
        }
        Outcome::Unavailable(error) => {
            tracing::warn!(r#type = %task.kind, error = %crate::one_line(error.as_ref()), "a dependency of the task is down: handed back, no attempt counted");
            hand_back(task, cx).await;
            None
        }
        Outcome::HandedBack => {
            hand_back(task, cx).await;
            None
        }
        Outcome::LeaseLost => {
            tracing::warn!(
                took_ms,
                "lease lost: the run stopped before its effect; handing the task back unless another worker has it"
            );
            cx.observer.lease_lost(task.id);
            // A lease that ran out here only (Redis did not answer, or no
            // replica acknowledged the extension) may still be ours in
            // Redis: handed back, no attempt is counted for a run that made
            // no effect. Another delivery's refuses the hand-back.
            hand_back(task, cx).await;
            None
        }
    }
}

/// Puts the task back at the front of its pending list, untried.
async fn hand_back(task: &Task, cx: &RunContext<'_>) {
    match cx.broker.requeue(task).await {
        Ok(RequeueOutcome::Pending) => tracing::info!("task handed back to pending"),
        Ok(RequeueOutcome::LeaseLost) => lease_lost("handed back"),
        Err(e) => {
            tracing::error!(error = %e, "could not hand the task back; its lease will run out")
        }
    }
}

fn lease_lost(what: &str) {
    tracing::warn!("lease lost before the task was {what}: another worker has it");
}

/// Records the run in the ledger until that succeeds or the worker's grace
/// is over (then the run may be repeated: the one duplicate left, as after a
/// crash). Returns whether it was recorded.
async fn mark_done(ledger: &dyn Ledger, task: &Task, abort: &CancellationToken) -> bool {
    let mut outage = Outage::new(
        "cannot record the completed run in the ledger; retrying (the task is not run again meanwhile)",
        "completed run recorded in the ledger",
        Duration::from_millis(50),
        Duration::from_secs(2),
    );
    loop {
        let attempt = tokio::time::timeout(LEDGER_CALL_LIMIT, ledger.mark_done(task))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {LEDGER_CALL_LIMIT:?}")));
        match attempt {
            Ok(()) => {
                outage.up();
                return true;
            }
            Err(e) => {
                if outage
                    .pause("postgres", &crate::one_line(e.as_ref()), abort)
                    .await
                    .is_break()
                {
                    tracing::error!(
                        "shutdown before the completed run was recorded in the ledger: it may run again"
                    );
                    return false;
                }
            }
        }
    }
}

/// Acknowledges a completed run until Redis answers (or the grace is over:
/// then the lease runs out and the next delivery finds the ledger row).
async fn acknowledge(task: &Task, cx: &RunContext<'_>) {
    let mut outage = Outage::new(
        "cannot acknowledge the completed run; retrying",
        "completed run acknowledged",
        Duration::from_millis(50),
        Duration::from_secs(2),
    );
    loop {
        match cx.acker.complete(&task.queue, task.id, task.delivery).await {
            Ok(AckOutcome::Completed) => {
                outage.up();
                return;
            }
            Ok(AckOutcome::LeaseLost) => {
                outage.up();
                settle(task, cx).await;
                return;
            }
            Err(e) => {
                if outage.pause("redis", &e, cx.abort).await.is_break() {
                    return;
                }
            }
        }
    }
}

/// The run completed but its lease was lost before the acknowledgement.
async fn settle(task: &Task, cx: &RunContext<'_>) {
    match cx.broker.settle(task, cx.done_retention).await {
        Ok(true) => tracing::warn!(
            "lease lost before the acknowledgement; the task was moved on meanwhile and is now marked completed"
        ),
        Ok(false) => lease_lost("acknowledged"),
        Err(e) => {
            tracing::error!(error = %e, "could not mark the completed task; its next delivery will find it in the ledger")
        }
    }
}
