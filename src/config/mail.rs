//! Mail settings.

use std::{path::PathBuf, time::Duration};

use clap::Args;

use super::{
    check::{InvalidSetting, at_least, at_most, bad, redact},
    parse_duration,
};

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Mail")]
pub struct MailConfig {
    /// SMTP server: smtp://[user:password@]host[:port] (STARTTLS with ?tls=required),
    /// smtps://... (implicit TLS). Unset: messages are written as .eml files into MAIL_DIR.
    #[arg(long, env = "SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,
    /// The longest an SMTP send may take up to the message's final dot, all
    /// phases together. A timeout there delivers nothing: the task is tried again.
    #[arg(long, env = "SMTP_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub smtp_timeout: Duration,
    /// The connection, TLS, the server's greeting and EHLO (RFC 5321 4.5.3.2
    /// allows 5 minutes for the greeting; a sender that gives up sooner only retries later).
    #[arg(long, env = "SMTP_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub smtp_connect_timeout: Duration,
    /// Each reply to AUTH, MAIL FROM, RCPT TO and DATA.
    #[arg(long, env = "SMTP_COMMAND_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub smtp_command_timeout: Duration,
    /// Writing the message, up to its final dot.
    #[arg(long, env = "SMTP_DATA_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub smtp_data_timeout: Duration,
    /// The reply to the message's final dot: RFC 5321 4.5.3.2 asks for 10
    /// minutes, since giving up here can mean a second copy. A reply within it
    /// is a success; none is "outcome unknown" (see SMTP_OUTCOME_UNKNOWN_DELAY).
    #[arg(long, env = "SMTP_FINAL_REPLY_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub smtp_final_reply_timeout: Duration,
    /// After a send whose outcome is unknown (no reply to its final dot, or its
    /// worker stopped while waiting), the next attempt waits this long, and sends
    /// again (with the same Message-ID) only if the address is still unverified.
    #[arg(long, env = "SMTP_OUTCOME_UNKNOWN_DELAY", default_value = "1h", value_parser = parse_duration)]
    pub smtp_outcome_unknown_delay: Duration,
    /// Folder of the file mailer.
    #[arg(
        id = "mail_dir",
        value_name = "MAIL_DIR",
        long = "mail-dir",
        env = "MAIL_DIR",
        default_value = ".dev/mail"
    )]
    pub dir: PathBuf,
    /// Sender name.
    #[arg(
        id = "mail_from_name",
        value_name = "MAIL_FROM_NAME",
        long = "mail-from-name",
        env = "MAIL_FROM_NAME",
        default_value = "Simple Bank"
    )]
    pub from_name: String,
    /// Sender address.
    #[arg(
        id = "mail_from_address",
        value_name = "MAIL_FROM_ADDRESS",
        long = "mail-from-address",
        env = "MAIL_FROM_ADDRESS",
        default_value = "no-reply@simplebank.local"
    )]
    pub from_address: String,
    /// Base URL of the links in emails.
    #[arg(long, env = "APP_BASE_URL", default_value = "http://localhost:8080")]
    pub app_base_url: String,
}

impl MailConfig {
    pub(super) fn validate(&self) -> Result<(), InvalidSetting> {
        if let Some(url) = &self.smtp_url
            && crate::mail::SmtpServer::from_url(url).is_err()
        {
            return Err(bad(
                "SMTP_URL",
                format!("is not a valid smtp:// or smtps:// URL ({})", redact(url)),
            ));
        }
        // Every email carries it, and a server without SMTPUTF8 refuses a
        // non-ASCII sender for every message; its domain makes the Message-ID.
        if !self.from_address.is_ascii() {
            return Err(bad(
                "MAIL_FROM_ADDRESS",
                "must be ASCII (an internationalised domain in its xn-- form)",
            ));
        }
        if self.from_address.parse::<lettre::Address>().is_err() {
            return Err(bad("MAIL_FROM_ADDRESS", "is not an email address"));
        }
        let ms = Duration::from_millis;
        at_least("SMTP_TIMEOUT", self.smtp_timeout, ms(100))?;
        at_least("SMTP_CONNECT_TIMEOUT", self.smtp_connect_timeout, ms(100))?;
        at_least("SMTP_COMMAND_TIMEOUT", self.smtp_command_timeout, ms(100))?;
        at_least("SMTP_DATA_TIMEOUT", self.smtp_data_timeout, ms(100))?;
        at_least(
            "SMTP_FINAL_REPLY_TIMEOUT",
            self.smtp_final_reply_timeout,
            ms(100),
        )?;
        at_most(
            "SMTP_FINAL_REPLY_TIMEOUT",
            self.smtp_final_reply_timeout,
            Duration::from_secs(3600),
        )?;
        // A run whose lease was lost may still be waiting for its reply this
        // long after its hand-over: the next run must not send before.
        let longest_wait = crate::mail::smtp_outcome_wait(self) + crate::tasks::LEDGER_ALLOWANCE;
        at_least(
            "SMTP_OUTCOME_UNKNOWN_DELAY",
            self.smtp_outcome_unknown_delay,
            longest_wait + Duration::from_secs(1),
        )
        .map_err(|e| {
            e.because("longer than SMTP_DATA_TIMEOUT + SMTP_FINAL_REPLY_TIMEOUT + 2 s: a send may still be waiting that long")
        })?;
        at_most(
            "SMTP_OUTCOME_UNKNOWN_DELAY",
            self.smtp_outcome_unknown_delay,
            Duration::from_secs(7 * 24 * 3600),
        )
    }
}
