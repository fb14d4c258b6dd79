//! Task kinds, their handlers, and the processed-task ledger.

pub mod ledger;
pub mod send_verify_email;

use sqlx::PgPool;

use crate::{mail::Mailer, queue::HandlerRegistry};

/// Sends the verification email of a new user.
pub const SEND_VERIFY_EMAIL: &str = "task:send_verify_email";

/// Every handler this service runs, keyed by task kind.
pub fn registry(pool: PgPool, mailer: Mailer, app_base_url: String) -> HandlerRegistry {
    let mut registry = HandlerRegistry::default();
    registry.register(
        SEND_VERIFY_EMAIL,
        ledger::Ledgered::new(
            pool.clone(),
            send_verify_email::SendVerifyEmail::new(pool, mailer, app_base_url),
        ),
    );
    registry
}
