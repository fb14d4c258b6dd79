//! Outgoing email. [`Mailer`] sends through SMTP when `SMTP_URL` is set, and
//! otherwise writes each message as an `.eml` file into `MAIL_DIR`, so a fresh
//! checkout works without a mail server and a person can open the message.

use std::{path::PathBuf, time::Duration};

mod smtp;

use lettre::{
    Message,
    message::{Mailbox, MultiPart},
};

pub use self::smtp::{Phase, SmtpError, SmtpServer};
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
    #[error("smtp: no answer within {0:?}")]
    TimedOut(Duration),
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
            Self::Config(_) | Self::Io(_) | Self::TimedOut(_) => false,
        }
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
    /// The longest one send may take, start to end.
    limit: Duration,
}

/// The longest a file mailer's send (write and sync one file) may take.
const FILE_SEND_LIMIT: Duration = Duration::from_secs(2);

/// The longest one send of the mailer `cfg` describes takes, start to end:
/// with the ledger's allowance, what a handler fences for
/// ([`crate::tasks::effect_budget`]) and a shutdown waits for.
pub fn send_limit(cfg: &MailConfig) -> Duration {
    match cfg.smtp_url {
        Some(_) => cfg.smtp_timeout,
        None => FILE_SEND_LIMIT,
    }
}

/// Where a message went, for the log.
#[derive(Debug, Clone)]
pub enum Delivered {
    Smtp,
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
                    .with_connect_timeout(cfg.smtp_timeout / 3),
            ),
            None => Transport::File(cfg.dir.clone()),
        };
        Ok(Self {
            from,
            transport,
            limit: send_limit(cfg),
        })
    }

    /// Sends `email`, in at most [`send_limit`]. Success means the SMTP
    /// server accepted it (or the file was written and synced).
    pub async fn send(&self, email: &Email) -> Result<Delivered, MailError> {
        tokio::time::timeout(self.limit, self.send_unbounded(email))
            .await
            .map_err(|_| MailError::TimedOut(self.limit))?
    }

    async fn send_unbounded(&self, email: &Email) -> Result<Delivered, MailError> {
        let message = Message::builder()
            .message_id(Some(format!(
                "<{}@{}>",
                email.message_key,
                self.from.email.domain()
            )))
            .from(self.from.clone())
            .to(Mailbox::new(None, email.to.parse()?))
            .subject(email.subject.clone())
            .multipart(MultiPart::alternative_plain_html(
                email.text.clone(),
                email.html.clone(),
            ))?;
        match &self.transport {
            Transport::Smtp(smtp) => {
                let envelope = message.envelope();
                let (Some(from), [to]) = (envelope.from(), envelope.to()) else {
                    unreachable!("one sender and one recipient, set above");
                };
                smtp.send(from, to, &message.formatted()).await?;
                Ok(Delivered::Smtp)
            }
            Transport::File(dir) => {
                tokio::fs::create_dir_all(dir).await?;
                let name = format!(
                    "{}-{}.eml",
                    chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ"),
                    uuid::Uuid::new_v4().simple()
                );
                // Written under a hidden name, then renamed: whoever watches
                // the folder sees an .eml file only once it is complete.
                let path = dir.join(&name);
                let partial = dir.join(format!(".{name}.partial"));
                let mut file = tokio::fs::File::create(&partial).await?;
                tokio::io::AsyncWriteExt::write_all(&mut file, &message.formatted()).await?;
                file.sync_all().await?;
                tokio::fs::rename(&partial, &path).await?;
                Ok(Delivered::File(path))
            }
        }
    }
}
