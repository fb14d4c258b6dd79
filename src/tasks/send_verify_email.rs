//! "task:send_verify_email": email a new user a link that verifies the address.

use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tracing::Instrument;

use chrono::Utc;

use super::sends::{Outcome, SendLog};
use crate::{
    config::{MailConfig, SignupConfig},
    mail::{Delivered, Email, MailError, Mailer},
    outbox::NewTask,
    queue::{Handler, Processed, Task, TaskError},
    telemetry,
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
    sends: SendLog,
    base_url: String,
    link_ttl: Duration,
    limits: SendLimits,
}

/// How long the parts of a send may take, from the mail settings.
#[derive(Debug, Clone, Copy)]
pub struct SendLimits {
    /// What the run fences for: [`super::effect_budget`].
    pub effect_budget: Duration,
    /// How long it then waits for the outcome: [`super::outcome_wait`].
    pub outcome_wait: Duration,
    /// How long after a send whose outcome is unknown the next one may go.
    pub unknown_delay: Duration,
}

impl SendLimits {
    pub fn from_config(mail: &MailConfig) -> Self {
        Self {
            effect_budget: super::effect_budget(mail),
            outcome_wait: super::outcome_wait(mail),
            unknown_delay: mail.smtp_outcome_unknown_delay,
        }
    }
}

impl SendVerifyEmail {
    /// Links in its emails work for `link_ttl` from each send.
    pub fn new(
        pool: PgPool,
        mailer: Mailer,
        base_url: String,
        link_ttl: Duration,
        limits: SendLimits,
    ) -> Self {
        Self {
            sends: SendLog::new(pool.clone()),
            pool,
            mailer,
            base_url: base_url.trim_end_matches('/').to_owned(),
            link_ttl,
            limits,
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
        if let Some(earlier) = self.sends.last_handed_over(task.id).await? {
            if earlier.was_sent() {
                // The server took it and the ledger record was lost.
                return Ok(Processed::default().with("skipped", "sent by an earlier attempt"));
            }
            // It may have arrived, or its run may still be waiting for the
            // reply (a lease lost meanwhile): not again yet.
            if earlier.is_unknown()
                && let Some(left) = self.limits.unknown_delay.checked_sub(earlier.age)
            {
                return Err(TaskError::retry_after(
                    left,
                    anyhow::anyhow!(
                        "the send handed over at {} has no known outcome: the next one waits until {}",
                        earlier.at,
                        earlier.at + self.limits.unknown_delay
                    ),
                ));
            }
        }
        let code = verify_email::get_or_create_for_task(
            &self.pool,
            task.id,
            &user.username,
            &user.email,
            self.link_ttl,
        )
        .await?;
        let email = self.email(task, &user.full_name, &code);
        // Past this point the email may go out: only while no other worker
        // can be handed this task before the hand-over and its record end.
        task.fence(self.limits.effect_budget).await?;
        let started = Utc::now();
        // The send as a client span, from the connection to the outcome.
        let send = telemetry::span_if_traced(|| {
            let server = self.mailer.server();
            tracing::info_span!(
                "send email",
                otel.name = "send email",
                otel.kind = "client",
                otel.status_code = tracing::field::Empty,
                network.protocol.name = server.map(|_| "smtp"),
                server.address = server.map(|(host, _)| host),
                server.port = server.map(|(_, port)| port),
                simplebank.mail.outcome = tracing::field::Empty,
            )
        });
        let prepared = match self.mailer.prepare(&email).instrument(send.clone()).await {
            Ok(prepared) => prepared,
            Err(e) => {
                send.record("simplebank.mail.outcome", "failed before the message");
                send.record("otel.status_code", "error");
                drop(send);
                let message_id = self.mailer.message_id(&email);
                return Err(self
                    .failed_before_handover(task, &message_id, started, e)
                    .await);
            }
        };
        // Recorded before the message and its final dot: if no reply comes
        // back, the next run knows the email may have gone out.
        let pending = self
            .sends
            .handing_over(task, prepared.message_id(), started)
            .await?;
        task.await_outcome(self.limits.outcome_wait);
        let sent = prepared.hand_over().instrument(send.clone()).await;
        let (outcome, detail) = match &sent {
            Ok(_) => (Outcome::Sent, None),
            Err(e) if e.is_outcome_unknown() => (Outcome::Unknown, Some(e.to_string())),
            Err(e) if e.is_permanent() => (Outcome::Refused, Some(e.to_string())),
            Err(e) => (Outcome::Failed, Some(e.to_string())),
        };
        send.record("simplebank.mail.outcome", outcome.as_str());
        if outcome != Outcome::Sent {
            send.record("otel.status_code", "error");
        }
        drop(send);
        if let Err(e) = self
            .sends
            .finished(pending, outcome, detail.as_deref())
            .await
        {
            // The row says "handed over, no outcome": read as unknown, which
            // after a success only delays nothing (the ledger records it).
            tracing::warn!(error = %e, "could not record the outcome of the send");
        }
        let delivered = sent.map_err(|e| match outcome {
            Outcome::Unknown => TaskError::retry_after(self.limits.unknown_delay, e),
            // Ten more refusals over four hours would change nothing.
            Outcome::Refused => TaskError::skip_retry(e),
            _ => TaskError::from(e),
        })?;
        let processed = Processed::default().with("email", code.email);
        Ok(match delivered {
            Delivered::Smtp => processed,
            // No mail server: the log says where the message is. Not the
            // link itself: it is a secret, and logs travel far.
            Delivered::File(path) => processed.with("file", path.display().to_string()),
        })
    }

    /// Records a send that failed before the server had the message, and
    /// says how the task goes on: a refusal of this recipient for good is
    /// archived; a refusal of the sender (or a server down) hands the task
    /// back uncounted, for the worker's breaker; anything else is retried.
    async fn failed_before_handover(
        &self,
        task: &Task,
        message_id: &str,
        started: chrono::DateTime<Utc>,
        e: MailError,
    ) -> TaskError {
        let outcome = match &e {
            e if e.is_permanent() => Outcome::Refused,
            e if e.is_sender_side() => Outcome::SenderSide,
            _ => Outcome::Failed,
        };
        let detail = e.to_string();
        if let Err(db) = self
            .sends
            .failed_before_handover(task, message_id, started, outcome, &detail)
            .await
        {
            tracing::warn!(error = %db, "could not record the failed send");
        }
        match outcome {
            Outcome::Refused => TaskError::skip_retry(e),
            Outcome::SenderSide => TaskError::unavailable(e),
            _ => TaskError::from(e),
        }
    }

    fn email(&self, task: &Task, full_name: &str, code: &verify_email::VerifyEmail) -> Email {
        let link = format!(
            "{}/v1/verify_email?email_id={}&secret_code={}",
            self.base_url, code.id, code.secret_code
        );
        Email {
            message_key: message_key(task),
            to: code.email.clone(),
            subject: "Welcome to Simple Bank".into(),
            text: format!(
                "Hello {full_name},\n\nThank you for registering with us!\nPlease open this link to verify your email address:\n{link}\n"
            ),
            html: format!(
                "Hello {},<br/>\nThank you for registering with us!<br/>\nPlease <a href=\"{}\">click here</a> to verify your email address.<br/>\n",
                html_escape(full_name),
                html_escape(&link)
            ),
        }
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
