//! Task kinds, their handlers, and the processed-task ledger.

pub mod ledger;
pub mod send_verify_email;
pub mod sends;

use std::time::Duration;

use sqlx::PgPool;

use crate::{
    config::{Config, MailConfig},
    mail::Mailer,
    queue::HandlerRegistry,
};

/// Time allowed for one record of a send in Postgres (the send log's row
/// before the hand-over, the ledger's after the outcome). A handler fences
/// for the hand-over and its record together, so no other worker is handed
/// the task before the record commits.
pub const LEDGER_ALLOWANCE: Duration = Duration::from_secs(2);

/// The longest the verify-email task's effect takes up to the hand-over (the
/// send log's record, then the send up to the final dot). The worker's
/// shutdown grace must cover it, and its lease twice (a lease is extended
/// every third of it, so two thirds is what a run may find left). What comes
/// after, the wait for the reply ([`outcome_wait`]), is covered by the lease
/// being extended, and by the send log.
pub fn effect_budget(mail: &MailConfig) -> Duration {
    crate::mail::handover_limit(mail) + LEDGER_ALLOWANCE
}

/// The longest a run waits, once its message is handed over, for the reply
/// and for the record of the outcome.
pub fn outcome_wait(mail: &MailConfig) -> Duration {
    crate::mail::outcome_wait(mail) + LEDGER_ALLOWANCE
}

/// Sends the verification email of a new user.
pub const SEND_VERIFY_EMAIL: &str = "task:send_verify_email";

/// Every handler this service runs, keyed by task kind. The worker runs
/// them with [`ledger::PgLedger`], so none runs again once it completed.
pub fn registry(pool: PgPool, mailer: Mailer, cfg: &Config) -> HandlerRegistry {
    let mut registry = HandlerRegistry::default();
    registry.register(
        SEND_VERIFY_EMAIL,
        send_verify_email::SendVerifyEmail::new(
            pool,
            mailer,
            cfg.mail.app_base_url.clone(),
            cfg.signup.verify_email_link_ttl,
            send_verify_email::SendLimits::from_config(&cfg.mail),
        ),
    );
    registry
}
