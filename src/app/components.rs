//! What a process runs: the one answer that chooses its settings (see
//! [`crate::config::Config::validate`]) and starts its components
//! ([`super::start`]).

use std::ops::BitOr;

/// The components a process runs; combine them with `|`. A process with none
/// is a one-shot tool (migrate, queues, tasks, outbox, `relay --once`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Components {
    /// The HTTP API: it stores users and their tasks.
    pub api: bool,
    /// The outbox relay: it forwards stored tasks to Redis.
    pub relay: bool,
    /// The task worker: it runs them.
    pub worker: bool,
}

impl Components {
    /// A one-shot tool.
    pub const NONE: Self = Self {
        api: false,
        relay: false,
        worker: false,
    };
    pub const API: Self = Self {
        api: true,
        ..Self::NONE
    };
    pub const RELAY: Self = Self {
        relay: true,
        ..Self::NONE
    };
    pub const WORKER: Self = Self {
        worker: true,
        ..Self::NONE
    };
    /// `serve`: all three.
    pub const ALL: Self = Self {
        api: true,
        relay: true,
        worker: true,
    };

    /// A one-shot tool, which runs none.
    pub fn is_tool(self) -> bool {
        self == Self::NONE
    }
}

impl BitOr for Components {
    type Output = Self;

    fn bitor(self, other: Self) -> Self {
        Self {
            api: self.api || other.api,
            relay: self.relay || other.relay,
            worker: self.worker || other.worker,
        }
    }
}
