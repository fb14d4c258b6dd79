//! The Lua scripts and how they are sent: by hash (EVALSHA), loaded again
//! after a Redis restart forgot them, and sent once or replayed as each
//! script allows (see the module doc of [`super`]).

use std::sync::LazyLock;

use fred::{
    prelude::*,
    types::{ClusterHash, CustomCommand, Key, Value, config::Options, scripts::Script},
};

use super::Broker;
use crate::QueueError;

/// Whether a script may be sent again when its connection dropped before
/// the reply came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replay {
    /// Running it twice is the same as running it once.
    Safe,
    /// Sent once; a lost reply is an error for the caller.
    Never,
}

/// A Lua script and the name its errors carry.
pub(super) struct Lua {
    pub name: &'static str,
    script: Script,
    replay: Replay,
}

impl Lua {
    fn new(name: &'static str, source: &'static str, replay: Replay) -> Self {
        Self {
            name,
            script: Script::from_lua(source),
            replay,
        }
    }
}

pub(super) struct Scripts {
    pub enqueue: Lua,
    pub dequeue: Lua,
    pub complete: Lua,
    pub fail: Lua,
    pub requeue: Lua,
    pub settle: Lua,
    pub trim_archive: Lua,
    pub extend: Lua,
    pub promote: Lua,
    pub run_now: Lua,
    pub delete: Lua,
}

pub(super) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    // Idempotent by task id.
    enqueue: Lua::new("enqueue", include_str!("scripts/enqueue.lua"), Replay::Safe),
    dequeue: Lua::new(
        "dequeue",
        include_str!("scripts/dequeue.lua"),
        Replay::Never,
    ),
    complete: Lua::new(
        "complete",
        include_str!("scripts/complete.lua"),
        Replay::Never,
    ),
    fail: Lua::new("fail", include_str!("scripts/fail.lua"), Replay::Never),
    requeue: Lua::new(
        "requeue",
        include_str!("scripts/requeue.lua"),
        Replay::Never,
    ),
    // Marks completed what is not active: the same either way.
    settle: Lua::new("settle", include_str!("scripts/settle.lua"), Replay::Safe),
    // Removes what is over the limits: the same either way.
    trim_archive: Lua::new(
        "trim_archive",
        include_str!("scripts/trim_archive.lua"),
        Replay::Safe,
    ),
    // Sets a deadline: the same either way.
    extend: Lua::new("extend", include_str!("scripts/extend.lua"), Replay::Safe),
    // A second pass moves what is due by then, as the next pass would.
    promote: Lua::new("promote", include_str!("scripts/promote.lua"), Replay::Safe),
    // A repeat finds the task pending (or gone) and leaves it: the same
    // effect, though the caller then hears of the repeat's finding.
    run_now: Lua::new("run_now", include_str!("scripts/run_now.lua"), Replay::Safe),
    delete: Lua::new("delete", include_str!("scripts/delete.lua"), Replay::Safe),
});

impl Broker {
    pub(super) async fn run(
        &self,
        lua: &Lua,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, QueueError> {
        self.run_on(self.pool.next(), lua, keys, args).await
    }

    /// With a replica wait ([`Broker::with_replica_wait`]), waits until the
    /// replicas hold every write `client` made so far (Redis WAIT counts a
    /// connection's writes), sent to the primary of `key`'s slot; fewer
    /// replicas within the wait is [`QueueError::NotReplicated`].
    pub(super) async fn wait_for_replicas(
        &self,
        client: &Client,
        key: &str,
    ) -> Result<(), QueueError> {
        let Some(super::ReplicaWait {
            replicas, timeout, ..
        }) = self.replica_wait.clone()
        else {
            return Ok(());
        };
        let slot = Key::from(key).cluster_hash();
        // Sent once, and only on a connection that is up: a WAIT sent on a
        // new connection (after a reconnect, or to a new primary) would
        // count that connection's writes, none, and pass at once without
        // covering ours.
        let once = client.with_options(&Options {
            max_attempts: Some(1),
            fail_fast: true,
            ..Options::default()
        });
        let acked: i64 = once
            .custom(
                CustomCommand::new_static("WAIT", ClusterHash::Custom(slot), false),
                vec![i64::from(replicas), timeout.as_millis() as i64],
            )
            .await?;
        if acked < i64::from(replicas) {
            return Err(QueueError::NotReplicated {
                wanted: replicas,
                got: acked.max(0) as u32,
                within: timeout,
            });
        }
        Ok(())
    }

    /// [`Broker::run`] on `client`, for a caller that sends a command after
    /// it on the same connection (WAIT counts that connection's writes).
    pub(super) async fn run_on(
        &self,
        client: &Client,
        lua: &Lua,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, QueueError> {
        match self.evalsha(client, lua, &keys, &args).await {
            // NOSCRIPT means it did not run: load it and send it again.
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                lua.script.load(client).await?;
                Ok(self.evalsha(client, lua, &keys, &args).await?)
            }
            result => Ok(result?),
        }
    }

    async fn evalsha(
        &self,
        client: &Client,
        lua: &Lua,
        keys: &[String],
        args: &[String],
    ) -> Result<Value, fred::error::Error> {
        match lua.replay {
            Replay::Safe => {
                lua.script
                    .evalsha(client, keys.to_vec(), args.to_vec())
                    .await
            }
            Replay::Never => {
                let once = client.with_options(&Options {
                    max_attempts: Some(1),
                    ..Options::default()
                });
                let mut call: Vec<Value> = Vec::with_capacity(2 + keys.len() + args.len());
                call.push(lua.script.sha1().clone().into());
                call.push(Value::Integer(keys.len() as i64));
                call.extend(keys.iter().chain(args).map(|v| Value::from(v.as_str())));
                // Routed to the slot of the first key, computed here. With
                // ClusterHash::Offset(2) and one attempt, every call failed
                // on a cluster ("Too many failed write attempts", fred 10.1);
                // a slot given outright goes to the right node at once.
                let slot = keys
                    .first()
                    .map_or(0, |k| Key::from(k.as_str()).cluster_hash());
                once.custom(
                    CustomCommand::new_static("EVALSHA", ClusterHash::Custom(slot), false),
                    call,
                )
                .await
            }
        }
    }
}
