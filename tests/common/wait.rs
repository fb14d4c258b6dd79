//! Waiting for what the app does: a task reaching a state, any condition
//! becoming true. A wait looks again at each event the service announces
//! (a batch forwarded, a run recorded, a lease lost: [`simplebank::events`]),
//! and after 100 ms at the latest for what no event announces (a child
//! process, the SMTP server's mailbox). Bounded: a wait that runs out fails the test with what it
//! waited for.

use std::time::Duration;

use super::queue_support::eventually_on;

use simplebank::queue::{Broker, TaskId, TaskInfo, TaskState};

/// Waits until `check` returns `Some`, looking again at each event of the
/// service (see the module doc), or panics after `limit` naming `what`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_on(limit, what, &mut simplebank::events::subscribe(), check).await
}

/// Waits (up to `limit`) until task `id` of `queue` exists and passes `ok`.
pub async fn wait_task(
    q: &Broker,
    queue: &str,
    id: impl Into<TaskId>,
    limit: Duration,
    what: &str,
    ok: impl Fn(&TaskInfo) -> bool,
) -> TaskInfo {
    let id = id.into();
    eventually(limit, &format!("task {id}: {what}"), || async {
        q.task(queue, id).await.ok().flatten().filter(&ok)
    })
    .await
}

/// Waits until task `id` of `queue` is in `state`.
pub async fn wait_state(
    q: &Broker,
    queue: &str,
    id: impl Into<TaskId>,
    state: TaskState,
) -> TaskInfo {
    wait_task(q, queue, id, Duration::from_secs(20), state.as_str(), |t| {
        t.state == state
    })
    .await
}
