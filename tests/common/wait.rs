//! Waiting for what the app does: a task reaching a state, any condition
//! becoming true. Bounded: a wait that runs out fails the test with what it
//! waited for.

use std::time::Duration;

use super::eventually;

use simplebank::queue::{Broker, TaskId, TaskInfo, TaskState};

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
