//! Task kinds, their handlers, and the processed-task ledger.

pub mod ledger;
pub mod send_verify_email;

use std::time::Duration;

use sqlx::PgPool;

use crate::{
    config::{Config, MailConfig},
    mail::Mailer,
    queue::HandlerRegistry,
};

/// Time allowed after an effect for its ledger record. A handler fences for
/// the effect and this together, so no other worker is handed the task
/// before the record commits.
pub const LEDGER_ALLOWANCE: Duration = Duration::from_secs(2);

/// The longest the verify-email task's effect (the send and its ledger
/// record) takes. The worker's shutdown grace must cover it, and its lease
/// twice (a lease is extended every third of it, so two thirds is what a
/// run may find left).
pub fn effect_budget(mail: &MailConfig) -> Duration {
    crate::mail::send_limit(mail) + LEDGER_ALLOWANCE
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
            effect_budget(&cfg.mail),
        ),
    );
    registry
}
