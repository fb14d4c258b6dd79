//! The Lua scripts behind every state change, loaded once per server and run
//! by hash (EVALSHA), reloaded transparently after a Redis restart.

use fred::{
    clients::Pool,
    types::{FromValue, scripts::Script},
};

pub(crate) struct Scripts {
    pub enqueue: Script,
    pub dequeue: Script,
    pub complete: Script,
    pub fail: Script,
    pub requeue: Script,
    pub extend: Script,
    pub forward: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Self {
            enqueue: Script::from_lua(include_str!("scripts/enqueue.lua")),
            dequeue: Script::from_lua(include_str!("scripts/dequeue.lua")),
            complete: Script::from_lua(include_str!("scripts/complete.lua")),
            fail: Script::from_lua(include_str!("scripts/fail.lua")),
            requeue: Script::from_lua(include_str!("scripts/requeue.lua")),
            extend: Script::from_lua(include_str!("scripts/extend.lua")),
            forward: Script::from_lua(include_str!("scripts/forward.lua")),
        }
    }
}

/// Runs `script` on the next pool connection.
pub(crate) async fn run<R: FromValue>(
    pool: &Pool,
    script: &Script,
    keys: Vec<String>,
    args: Vec<String>,
) -> Result<R, fred::error::Error> {
    script.evalsha_with_reload(pool.next(), keys, args).await
}
