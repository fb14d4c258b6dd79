//! Mail settings.

use std::{path::PathBuf, time::Duration};

use clap::Args;

use super::{
    check::{InvalidSetting, at_least, bad, redact},
    parse_duration,
};

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Mail")]
pub struct MailConfig {
    /// SMTP server: smtp://[user:password@]host[:port] (STARTTLS with ?tls=required),
    /// smtps://... (implicit TLS). Unset: messages are written as .eml files into MAIL_DIR.
    #[arg(long, env = "SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,
    /// Timeout of one SMTP exchange.
    #[arg(long, env = "SMTP_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub smtp_timeout: Duration,
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
        at_least(
            "SMTP_TIMEOUT",
            self.smtp_timeout,
            Duration::from_millis(100),
        )
    }
}
