//! The handler interface: what a task kind's code implements, how handlers
//! are looked up by kind, how one run is guarded (timeout, panic), and the
//! ledger of completed runs the worker keeps beside them.

use std::{collections::HashMap, panic::AssertUnwindSafe, sync::Arc};

use futures::{FutureExt, future::BoxFuture};

use super::{Task, TaskError};

/// Runs tasks of one kind.
pub trait Handler: Send + Sync + 'static {
    /// Runs `task` once; the error says whether to retry it.
    fn handle<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Processed, TaskError>>;
}

/// The record of completed runs (a Postgres table in this service), so that
/// a task delivered again after it ran is acknowledged without running again.
///
/// The worker asks [`Ledger::is_done`] before a run and calls
/// [`Ledger::mark_done`] after a successful one, outside the task's timeout
/// and again until it succeeds: a failed record must not become a retry that
/// repeats the run's effect.
pub trait Ledger: Send + Sync + 'static {
    /// Whether a run of `task` already completed.
    fn is_done<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, anyhow::Result<bool>>;
    /// Records that the run of `task` completed.
    fn mark_done<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, anyhow::Result<()>>;
}

/// Fields a handler adds to the "processed task" log line.
#[derive(Debug, Default)]
pub struct Processed {
    fields: Vec<(&'static str, String)>,
}

impl Processed {
    /// Adds `name=value` to the log line.
    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.fields.push((name, value.into()));
        self
    }
}

impl std::fmt::Display for Processed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (k, v)) in self.fields.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { "" } else { " " })?;
        }
        Ok(())
    }
}

/// A handler from an async function that takes the task by value.
pub fn handler_fn<F, Fut>(f: F) -> impl Handler
where
    F: Fn(Task) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Processed, TaskError>> + Send + 'static,
{
    struct FnHandler<F>(F);
    impl<F, Fut> Handler for FnHandler<F>
    where
        F: Fn(Task) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Processed, TaskError>> + Send + 'static,
    {
        fn handle<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Processed, TaskError>> {
            Box::pin((self.0)(task.clone()))
        }
    }
    FnHandler(f)
}

/// The metrics label of a task kind no handler knows.
pub(super) const UNREGISTERED: &str = "unregistered";

/// Handlers by task kind.
#[derive(Default, Clone)]
pub struct HandlerRegistry {
    handlers: HashMap<String, Arc<dyn Handler>>,
}

impl HandlerRegistry {
    /// Runs tasks of `kind` with `handler` (replacing any registered before).
    pub fn register(&mut self, kind: &str, handler: impl Handler) -> &mut Self {
        self.handlers.insert(kind.to_owned(), Arc::new(handler));
        self
    }

    pub(super) fn get(&self, kind: &str) -> Option<Arc<dyn Handler>> {
        self.handlers.get(kind).cloned()
    }

    /// `kind` as a metrics label: a kind no handler knows (enqueued by hand
    /// under any name) is "unregistered", one series rather than one per name.
    pub(super) fn label<'a>(&self, kind: &'a str) -> &'a str {
        match self.handlers.contains_key(kind) {
            true => kind,
            false => UNREGISTERED,
        }
    }
}

/// Runs a handler with the task's timeout (moved by [`Task::await_outcome`]
/// while the run waits for an effect's outcome); a panic or a timeout is a
/// failed attempt.
pub(super) async fn run_handler(
    handler: &dyn Handler,
    task: &Task,
) -> Result<Processed, TaskError> {
    task.guard.start_timeout(task.timeout);
    let handling = AssertUnwindSafe(handler.handle(task)).catch_unwind();
    tokio::pin!(handling);
    let ended = loop {
        let deadline = task.guard.deadline().expect("set above");
        tokio::select! {
            ended = &mut handling => break ended,
            _ = tokio::time::sleep_until(deadline.into()) => {
                if task.guard.deadline() <= Some(std::time::Instant::now()) {
                    return Err(TaskError::Retry(anyhow::anyhow!(
                        "timed out after {:?}",
                        task.timeout
                    )));
                }
            }
        }
    };
    match ended {
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(TaskError::Retry(anyhow::anyhow!("handler panicked: {msg}")))
        }
        Ok(result) => result,
    }
}
