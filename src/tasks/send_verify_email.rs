//! "task:send_verify_email": email a new user a link that verifies the address.

use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::{
    config::SignupConfig,
    mail::{Delivered, Email, Mailer},
    outbox::NewTask,
    queue::{Handler, Processed, Task, TaskError},
    users::{repo, verify_email},
};

/// The task's payload, as stored in the outbox.
#[derive(Debug, Serialize, Deserialize)]
pub struct Payload {
    pub username: String,
}

/// The task that emails new user `username`, as the sign-up settings shape
/// it (queue, retries, timeout, delay); inserted in the sign-up transaction.
pub fn task(cfg: &SignupConfig, username: &str) -> NewTask {
    NewTask {
        kind: super::SEND_VERIFY_EMAIL,
        queue: cfg.verify_email_queue.clone(),
        payload: serde_json::json!(Payload {
            username: username.to_owned(),
        }),
        max_retry: cfg.verify_email_max_retry,
        timeout: cfg.verify_email_timeout,
        process_in: cfg.verify_email_process_in,
        request_id: None,
    }
}

pub struct SendVerifyEmail {
    pool: PgPool,
    mailer: Mailer,
    base_url: String,
    link_ttl: Duration,
    /// What the send and its ledger record may take: [`super::effect_budget`].
    effect_budget: Duration,
}

impl SendVerifyEmail {
    /// Links in its emails work for `link_ttl` from each send; a run fences
    /// for `effect_budget` before it sends.
    pub fn new(
        pool: PgPool,
        mailer: Mailer,
        base_url: String,
        link_ttl: Duration,
        effect_budget: Duration,
    ) -> Self {
        Self {
            pool,
            mailer,
            base_url: base_url.trim_end_matches('/').to_owned(),
            link_ttl,
            effect_budget,
        }
    }

    async fn run(&self, task: &Task) -> Result<Processed, TaskError> {
        let payload: Payload = task.json()?;
        let user = repo::get(&self.pool, &payload.username)
            .await?
            .ok_or_else(|| {
                TaskError::skip_retry(anyhow::anyhow!(
                    "user {:?} does not exist",
                    payload.username
                ))
            })?;
        if user.is_email_verified {
            // Verified meanwhile (through another link): nothing to send.
            return Ok(Processed::default().with("skipped", "already verified"));
        }
        let code = verify_email::get_or_create_for_task(
            &self.pool,
            task.id,
            &user.username,
            &user.email,
            self.link_ttl,
        )
        .await?;
        let link = format!(
            "{}/v1/verify_email?email_id={}&secret_code={}",
            self.base_url, code.id, code.secret_code
        );
        let email = Email {
            message_key: message_key(task),
            to: code.email.clone(),
            subject: "Welcome to Simple Bank".into(),
            text: format!(
                "Hello {},\n\nThank you for registering with us!\nPlease open this link to verify your email address:\n{link}\n",
                user.full_name
            ),
            html: format!(
                "Hello {},<br/>\nThank you for registering with us!<br/>\nPlease <a href=\"{}\">click here</a> to verify your email address.<br/>\n",
                html_escape(&user.full_name),
                html_escape(&link)
            ),
        };
        // Past this point the email may go out: only while no other worker
        // can be handed this task before the send and its ledger record end.
        task.fence(self.effect_budget).await?;
        let delivered = self.mailer.send(&email).await.map_err(|e| {
            if e.is_permanent() {
                // Ten more refusals over four hours would change nothing.
                TaskError::skip_retry(e)
            } else {
                TaskError::from(e)
            }
        })?;
        let processed = Processed::default().with("email", code.email);
        Ok(match delivered {
            Delivered::Smtp => processed,
            // No mail server: the log says where the message is. Not the
            // link itself: it is a secret, and logs travel far.
            Delivered::File(path) => processed.with("file", path.display().to_string()),
        })
    }
}

impl Handler for SendVerifyEmail {
    fn handle<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Processed, TaskError>> {
        Box::pin(self.run(task))
    }
}

/// The Message-ID key of `task`'s email: one per task, so every attempt's
/// copy carries the same Message-ID. The task's creation time (its outbox
/// row's, carried on every delivery) keeps it unique beyond this database:
/// staging and production, or a database rebuilt from scratch, reuse task
/// ids, and a receiver drops a message whose Message-ID it already holds.
pub fn message_key(task: &Task) -> String {
    let created = task.created_at.map_or(0, |t| t.timestamp_millis());
    format!("verify-email.{}.{created}", task.id)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
