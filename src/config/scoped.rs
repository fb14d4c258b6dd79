//! The settings of each subcommand: each takes only the groups it uses, so
//! `migrate --help` lists no SMTP setting and a setting only the worker
//! reads cannot stop a migration. The groups a command does not take keep
//! their defaults (environment ignored) in the [`Config`] it runs with.

use clap::{Args, FromArgMatches};

use super::{
    AdminConfig, Config, DbConfig, LogConfig, MailConfig, RedisConfig, RelayConfig,
    RetentionConfig, SignupConfig, TracingConfig, WorkerConfig,
};

/// A settings group with every value at its default, whatever the
/// environment says.
fn defaults<T: Args + FromArgMatches>() -> T {
    let command =
        T::augment_args(clap::Command::new("defaults")).mut_args(|arg| arg.env(None::<&str>));
    let matches = command
        .try_get_matches_from(["defaults"])
        .expect("every setting has a default or is optional");
    T::from_arg_matches(&matches).expect("defaults parse")
}

/// `relay`: Postgres, Redis, logging, the relay and the retention it runs.
#[derive(Debug, Clone, Args)]
pub struct ForRelay {
    #[command(flatten)]
    pub db: DbConfig,
    #[command(flatten)]
    pub redis: RedisConfig,
    #[command(flatten)]
    pub log: LogConfig,
    #[command(flatten)]
    pub tracing: TracingConfig,
    #[command(flatten)]
    pub relay: RelayConfig,
    #[command(flatten)]
    pub admin: AdminConfig,
    #[command(flatten)]
    pub retention: RetentionConfig,
}

impl From<ForRelay> for Config {
    fn from(s: ForRelay) -> Self {
        Config {
            db: s.db,
            redis: s.redis,
            log: s.log,
            tracing: s.tracing,
            relay: s.relay,
            admin: s.admin,
            retention: s.retention,
            http: defaults(),
            signup: defaults(),
            worker: defaults(),
            mail: defaults(),
        }
    }
}

/// `worker`: Postgres, Redis, logging, the worker, the verify-email task and
/// mail.
#[derive(Debug, Clone, Args)]
pub struct ForWorker {
    #[command(flatten)]
    pub db: DbConfig,
    #[command(flatten)]
    pub redis: RedisConfig,
    #[command(flatten)]
    pub log: LogConfig,
    #[command(flatten)]
    pub tracing: TracingConfig,
    #[command(flatten)]
    pub signup: SignupConfig,
    #[command(flatten)]
    pub worker: WorkerConfig,
    #[command(flatten)]
    pub mail: MailConfig,
    #[command(flatten)]
    pub admin: AdminConfig,
}

impl From<ForWorker> for Config {
    fn from(s: ForWorker) -> Self {
        Config {
            db: s.db,
            redis: s.redis,
            log: s.log,
            tracing: s.tracing,
            signup: s.signup,
            worker: s.worker,
            mail: s.mail,
            admin: s.admin,
            http: defaults(),
            relay: defaults(),
            retention: defaults(),
        }
    }
}

/// `migrate`: Postgres and logging.
#[derive(Debug, Clone, Args)]
pub struct ForMigrate {
    #[command(flatten)]
    pub db: DbConfig,
    #[command(flatten)]
    pub log: LogConfig,
}

impl From<ForMigrate> for Config {
    fn from(s: ForMigrate) -> Self {
        Config {
            db: s.db,
            log: s.log,
            tracing: defaults(),
            redis: defaults(),
            http: defaults(),
            signup: defaults(),
            relay: defaults(),
            worker: defaults(),
            mail: defaults(),
            admin: defaults(),
            retention: defaults(),
        }
    }
}

/// `queues`: Postgres, Redis, logging, and the worker's queue list.
#[derive(Debug, Clone, Args)]
pub struct ForQueues {
    #[command(flatten)]
    pub db: DbConfig,
    #[command(flatten)]
    pub redis: RedisConfig,
    #[command(flatten)]
    pub log: LogConfig,
    #[command(flatten)]
    pub worker: WorkerConfig,
}

impl From<ForQueues> for Config {
    fn from(s: ForQueues) -> Self {
        Config {
            db: s.db,
            redis: s.redis,
            log: s.log,
            worker: s.worker,
            tracing: defaults(),
            http: defaults(),
            signup: defaults(),
            relay: defaults(),
            mail: defaults(),
            admin: defaults(),
            retention: defaults(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HttpConfig;

    /// A setting added without a default would make the commands that do
    /// not take its group panic at start; this finds it first.
    #[test]
    fn every_group_has_defaults() {
        let _: HttpConfig = defaults();
        let _: SignupConfig = defaults();
        let _: WorkerConfig = defaults();
        let _: MailConfig = defaults();
        let _: RelayConfig = defaults();
        let _: RedisConfig = defaults();
        let _: DbConfig = defaults();
        let _: LogConfig = defaults();
        let _: AdminConfig = defaults();
        let _: TracingConfig = defaults();
    }
}
