//! Outgoing email. [`Mailer`] sends through SMTP when `SMTP_URL` is set, and
//! otherwise writes each message as an `.eml` file into `MAIL_DIR`, so a fresh
//! checkout works without a mail server and a person can open the message.

use std::{path::PathBuf, time::Duration};

mod smtp;

use lettre::{
    Message,
    message::{Mailbox, MultiPart},
};

pub use self::smtp::{Phase, SmtpError, SmtpLimits, SmtpServer};
use crate::config::MailConfig;

/// One message to one recipient, with plain-text and HTML bodies.
#[derive(Debug, Clone)]
pub struct Email {
    /// What makes its Message-ID: the same on every send of one email (each
    /// attempt of one task), so that receivers and people recognise a repeat.
    /// The mailer adds the sender's domain: `<{message_key}@{domain}>`.
    pub message_key: String,
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("mail configuration: {0}")]
    Config(String),
    #[error("invalid message: {0}")]
    Message(#[from] lettre::error::Error),
    #[error("invalid address: {0}")]
    Address(#[from] lettre::address::AddressError),
    #[error(transparent)]
    Smtp(#[from] SmtpError),
    #[error("writing the mail file: {0}")]
    Io(#[from] std::io::Error),
    #[error("writing the mail file: not done within {0:?}")]
    FileTimedOut(Duration),
}

impl MailError {
    /// Whether sending again cannot help: the server refused this recipient
    /// or this message for good (see [`SmtpError::is_permanent`]; a refusal
    /// of the sender passes when the provider recovers), or the message
    /// cannot be built.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Smtp(e) => e.is_permanent(),
            Self::Message(_) | Self::Address(_) => true,
            Self::Config(_) | Self::Io(_) | Self::FileTimedOut(_) => false,
        }
    }

    /// Whether every other message would fail the same way for now: the
    /// sender was refused or the server is down ([`SmtpError::is_sender_side`]).
    /// A mail folder that cannot be written is not counted: it fails at the
    /// hand-over, and is retried like any failure there.
    pub fn is_sender_side(&self) -> bool {
        matches!(self, Self::Smtp(e) if e.is_sender_side())
    }

    /// Whether the message may have gone out although the send failed.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, Self::Smtp(e) if e.is_outcome_unknown())
    }
}

/// Where messages go.
#[derive(Clone)]
pub enum Transport {
    Smtp(SmtpServer),
    File(PathBuf),
}

/// Sends [`Email`]s from the configured sender.
#[derive(Clone)]
pub struct Mailer {
    from: Mailbox,
    transport: Transport,
}

/// The longest a file mailer's send (write and sync one file) may take.
const FILE_SEND_LIMIT: Duration = Duration::from_secs(2);

/// The longest a send of the mailer `cfg` describes takes until its message
/// is handed over (for SMTP: up to the final dot). With the ledger's
/// allowance, what a handler fences for ([`crate::tasks::effect_budget`])
/// and a shutdown waits for.
pub fn handover_limit(cfg: &MailConfig) -> Duration {
    match cfg.smtp_url {
        Some(_) => cfg.smtp_timeout,
        None => FILE_SEND_LIMIT,
    }
}

/// The longest a send then waits for its outcome (the reply to the final
/// dot); none for the file mailer, whose outcome is known at once.
pub fn outcome_wait(cfg: &MailConfig) -> Duration {
    match cfg.smtp_url {
        Some(_) => smtp_outcome_wait(cfg),
        None => FILE_SEND_LIMIT,
    }
}

/// An SMTP send's [`outcome_wait`]: the body is written after the hand-over
/// is recorded, then the reply to the final dot is waited for.
pub fn smtp_outcome_wait(cfg: &MailConfig) -> Duration {
    cfg.smtp_data_timeout + cfg.smtp_final_reply_timeout
}

/// The SMTP limits the settings give.
fn smtp_limits(cfg: &MailConfig) -> SmtpLimits {
    SmtpLimits {
        exchange: cfg.smtp_timeout,
        connect: cfg.smtp_connect_timeout,
        command: cfg.smtp_command_timeout,
        data: cfg.smtp_data_timeout,
        final_reply: cfg.smtp_final_reply_timeout,
    }
}

/// Where a message went, for the log.
#[derive(Debug, Clone)]
pub enum Delivered {
    Smtp,
    File(PathBuf),
}

/// A message ready to go: for SMTP, the server waits for it at DATA's 354.
pub struct Prepared {
    message_id: String,
    formatted: Vec<u8>,
    route: Route,
}

enum Route {
    // Boxed: an open connection is large beside a path.
    Smtp(Box<smtp::Ready>),
    File(PathBuf),
}

impl Mailer {
    pub fn from_config(cfg: &MailConfig) -> Result<Self, MailError> {
        let from = Mailbox::new(Some(cfg.from_name.clone()), cfg.from_address.parse()?);
        let transport = match &cfg.smtp_url {
            // The error never quotes the URL, password and all.
            Some(url) => Transport::Smtp(
                SmtpServer::from_url(url)
                    .map_err(|e| MailError::Config(e.to_string()))?
                    .with_limits(smtp_limits(cfg)),
            ),
            None => Transport::File(cfg.dir.clone()),
        };
        Ok(Self { from, transport })
    }

    /// Builds `email` and, for SMTP, runs the exchange up to the point where
    /// the server waits for the message (within [`handover_limit`]). Nothing
    /// is delivered yet: [`Prepared::hand_over`] sends it. Two steps, so the
    /// caller can record the hand-over in between.
    pub async fn prepare(&self, email: &Email) -> Result<Prepared, MailError> {
        let message_id = self.message_id(email);
        let message = Message::builder()
            .message_id(Some(message_id.clone()))
            .from(self.from.clone())
            .to(Mailbox::new(None, email.to.parse()?))
            .subject(email.subject.clone())
            .multipart(MultiPart::alternative_plain_html(
                email.text.clone(),
                email.html.clone(),
            ))?;
        let formatted = message.formatted();
        let route = match &self.transport {
            Transport::Smtp(smtp) => {
                let envelope = message.envelope();
                let (Some(from), [to]) = (envelope.from(), envelope.to()) else {
                    unreachable!("one sender and one recipient, set above");
                };
                Route::Smtp(Box::new(
                    smtp.prepare(from, to, !formatted.is_ascii()).await?,
                ))
            }
            Transport::File(dir) => Route::File(dir.clone()),
        };
        Ok(Prepared {
            message_id,
            formatted,
            route,
        })
    }

    /// The SMTP server's host and port (`None`: files, no server), for the
    /// send's client span.
    pub fn server(&self) -> Option<(&str, u16)> {
        match &self.transport {
            Transport::Smtp(smtp) => Some(smtp.address()),
            Transport::File(_) => None,
        }
    }

    /// The Message-ID of `email`: `<{message_key}@{the sender's domain}>`.
    pub fn message_id(&self, email: &Email) -> String {
        format!("<{}@{}>", email.message_key, self.from.email.domain())
    }
}

impl Prepared {
    /// The message's Message-ID header.
    pub fn message_id(&self) -> &str {
        &self.message_id
    }

    /// Sends the message. Success means the SMTP server accepted it (or the
    /// file was written and synced); [`MailError::is_outcome_unknown`] means
    /// the server had it all and its reply did not come back.
    pub async fn hand_over(self) -> Result<Delivered, MailError> {
        match self.route {
            Route::Smtp(ready) => {
                ready.hand_over(&self.formatted).await?;
                Ok(Delivered::Smtp)
            }
            Route::File(dir) => {
                tokio::time::timeout(FILE_SEND_LIMIT, write_file(&dir, &self.formatted))
                    .await
                    .map_err(|_| MailError::FileTimedOut(FILE_SEND_LIMIT))?
            }
        }
    }
}

/// Writes one message into `dir` as an .eml file.
async fn write_file(dir: &std::path::Path, formatted: &[u8]) -> Result<Delivered, MailError> {
    tokio::fs::create_dir_all(dir).await?;
    let name = format!(
        "{}-{}.eml",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ"),
        uuid::Uuid::new_v4().simple()
    );
    // Written under a hidden name, then renamed: whoever watches the folder
    // sees an .eml file only once it is complete.
    let path = dir.join(&name);
    let partial = dir.join(format!(".{name}.partial"));
    let mut file = tokio::fs::File::create(&partial).await?;
    tokio::io::AsyncWriteExt::write_all(&mut file, formatted).await?;
    file.sync_all().await?;
    tokio::fs::rename(&partial, &path).await?;
    Ok(Delivered::File(path))
}
