//! The SMTP exchange, phase by phase, so that a refusal is judged by where it
//! came: a 5xx to RCPT TO is about this recipient, and retrying cannot help;
//! a 5xx to the greeting, EHLO, AUTH or MAIL FROM is about the sender (a
//! paused account, an expired password, a quota) and passes once the
//! provider recovers, so it is retried like an outage. One connection per
//! send, on lettre's connection type.
//!
//! Every phase has its own limit ([`SmtpLimits`]), in the spirit of RFC 5321
//! 4.5.3.2: short ones up to the message's final dot, where giving up costs
//! only a retry, and a long one for the reply to that dot, where giving up
//! can cost a second copy. A send is two steps so that the caller can record
//! the hand-over in between: [`SmtpServer::prepare`] runs the exchange up to
//! DATA's 354, [`Ready::hand_over`] writes the message and waits for its
//! reply.

use std::{
    fmt,
    future::Future,
    time::{Duration, Instant},
};

use lettre::{
    Address,
    transport::smtp::{
        authentication::{Credentials, Mechanism},
        client::{AsyncSmtpConnection, TlsParameters},
        commands::{Data, Mail, Rcpt},
        extension::{ClientId, Extension, MailBodyParameter, MailParameter},
    },
};

/// Where in the exchange a reply came (or did not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The connection, the greeting, EHLO and STARTTLS.
    Connect,
    Auth,
    MailFrom,
    RcptTo,
    Data,
    /// Writing the message.
    Message,
    /// The reply to the message's final dot.
    EndOfData,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connect => "connect",
            Self::Auth => "AUTH",
            Self::MailFrom => "MAIL FROM",
            Self::RcptTo => "RCPT TO",
            Self::Data => "DATA",
            Self::Message => "the message",
            Self::EndOfData => "end of DATA",
        })
    }
}

/// A failed send.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    /// The exchange failed at `phase`: what the server (or the link) said.
    #[error("smtp at {phase}: {source}")]
    Exchange {
        phase: Phase,
        #[source]
        source: lettre::transport::smtp::Error,
    },
    /// No reply at `phase` within its limit.
    #[error("smtp at {phase}: no reply within {after:?}")]
    TimedOut { phase: Phase, after: Duration },
    /// The whole message was handed over and no reply came back (none in
    /// time, or the link broke): the server may have queued it.
    #[error("smtp: outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// This server cannot take this recipient, whatever it answers.
    #[error("smtp: {0}")]
    Undeliverable(&'static str),
}

impl SmtpError {
    /// Whether sending this message to this recipient again cannot help: a
    /// 5xx at RCPT TO that is about the mailbox (550, 551, 553, or an
    /// enhanced 5.1.x), or a 5xx at the end of DATA that names the message
    /// (enhanced 5.6.x). Everything else is about the sender or the moment:
    /// retried.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Exchange { phase, source } => match source.status() {
                Some(code) if source.is_permanent() => {
                    refused_for_good(*phase, &code.to_string(), &source.to_string())
                }
                _ => false,
            },
            Self::Undeliverable(_) => true,
            Self::TimedOut { .. } | Self::OutcomeUnknown(_) => false,
        }
    }

    /// Whether the failure is about the sender or the server, not this
    /// message: anything that went wrong at the connection, the greeting,
    /// EHLO, AUTH or MAIL FROM (an account paused, a password expired, a
    /// quota, the server down). Sending other messages fails the same way
    /// until the provider recovers.
    pub fn is_sender_side(&self) -> bool {
        match self {
            Self::Exchange { phase, .. } | Self::TimedOut { phase, .. } => {
                matches!(phase, Phase::Connect | Phase::Auth | Phase::MailFrom)
            }
            Self::OutcomeUnknown(_) | Self::Undeliverable(_) => false,
        }
    }

    /// Whether the message may have been delivered although the send failed.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, Self::OutcomeUnknown(_))
    }
}

/// Whether a 5xx reply `code` (shown by lettre as `shown`) at `phase` is
/// about this recipient or this message; see [`SmtpError::is_permanent`].
fn refused_for_good(phase: Phase, code: &str, shown: &str) -> bool {
    let enhanced = enhanced_status(shown);
    match phase {
        // An enhanced code decides where there is one: a server that checks
        // the sender at RCPT TO (Postfix does by default) answers 553 5.7.1
        // "Sender address rejected", or 550 5.1.8 "bad sender's domain".
        Phase::RcptTo => match enhanced {
            Some(s) => s.starts_with("5.1.") && !matches!(s, "5.1.7" | "5.1.8"),
            None => matches!(code, "550" | "551" | "553"),
        },
        Phase::EndOfData => enhanced.is_some_and(|s| s.starts_with("5.6.")),
        Phase::Connect | Phase::Auth | Phase::MailFrom | Phase::Data | Phase::Message => false,
    }
}

/// The enhanced status code (RFC 3463, `class.subject.detail`) at the start
/// of a reply's text, as lettre shows it: `permanent error (550): 5.1.1 ...`.
fn enhanced_status(shown: &str) -> Option<&str> {
    let text = shown.split_once("): ")?.1;
    let first = text.split_whitespace().next()?;
    let parts: Vec<&str> = first.split('.').collect();
    let numeric = parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    numeric.then_some(first)
}

/// How long the goodbye (QUIT) after a send may take.
const GOODBYE_LIMIT: Duration = Duration::from_secs(2);

/// How long each phase of a send may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmtpLimits {
    /// Everything up to the message's final dot, together.
    pub exchange: Duration,
    /// The connection, TLS, the greeting and EHLO (STARTTLS and its EHLO).
    pub connect: Duration,
    /// Each reply to AUTH, MAIL FROM, RCPT TO and DATA.
    pub command: Duration,
    /// Writing the message.
    pub data: Duration,
    /// The reply to the final dot.
    pub final_reply: Duration,
}

/// How the connection is secured.
#[derive(Clone)]
enum Security {
    Plain,
    /// TLS from the first byte (smtps://).
    Wrapper(TlsParameters),
    /// STARTTLS, refused if the server does not offer it (?tls=required).
    Required(TlsParameters),
    /// STARTTLS when the server offers it (?tls=opportunistic).
    Opportunistic(TlsParameters),
}

/// An SMTP server as SMTP_URL names it: `smtp://[user:password@]host[:port]`
/// (plain, port 25; `?tls=required` or `?tls=opportunistic` for STARTTLS,
/// port 587) or `smtps://` (TLS, port 465), an optional EHLO name as its path.
#[derive(Clone)]
pub struct SmtpServer {
    host: String,
    port: u16,
    security: Security,
    credentials: Option<Credentials>,
    hello: ClientId,
    /// `None` until [`SmtpServer::with_limits`]: no limits.
    limits: Option<SmtpLimits>,
}

/// Why SMTP_URL cannot be used; never quotes the URL (it may hold a password).
#[derive(Debug, thiserror::Error)]
#[error("SMTP_URL {0}")]
pub struct BadSmtpUrl(&'static str);

impl SmtpServer {
    /// Where it connects: host and port.
    pub fn address(&self) -> (&str, u16) {
        (&self.host, self.port)
    }

    pub fn from_url(url: &str) -> Result<Self, BadSmtpUrl> {
        let url = url::Url::parse(url).map_err(|_| BadSmtpUrl("is not a URL"))?;
        let host = url.host_str().ok_or(BadSmtpUrl("has no host"))?.to_owned();
        let tls = || TlsParameters::new(host.clone()).map_err(|_| BadSmtpUrl("has no usable TLS"));
        let starttls = url.query_pairs().find(|(k, _)| k == "tls").map(|(_, v)| v);
        let (security, port) = match (url.scheme(), starttls.as_deref()) {
            ("smtp", None) => (Security::Plain, 25),
            ("smtp", Some("required")) => (Security::Required(tls()?), 587),
            ("smtp", Some("opportunistic")) => (Security::Opportunistic(tls()?), 587),
            ("smtps", _) => (Security::Wrapper(tls()?), 465),
            _ => return Err(BadSmtpUrl("is not an smtp:// or smtps:// URL")),
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| BadSmtpUrl("has a user or password that is not UTF-8"))
        };
        let credentials = match url.password() {
            Some(password) => Some(Credentials::new(decode(url.username())?, decode(password)?)),
            None => None,
        };
        let hello = match url.path().trim_matches('/') {
            "" => ClientId::default(),
            name => ClientId::Domain(name.to_owned()),
        };
        Ok(Self {
            port: url.port().unwrap_or(port),
            host,
            security,
            credentials,
            hello,
            limits: None,
        })
    }

    /// Sends under `limits`.
    pub fn with_limits(self, limits: SmtpLimits) -> Self {
        Self {
            limits: Some(limits),
            ..self
        }
    }

    /// Runs the exchange up to DATA's 354 for a message from `from` to `to`
    /// (`eight_bit`: it carries 8-bit bytes), each failure naming its phase.
    /// Nothing is delivered yet: the message goes with [`Ready::hand_over`].
    pub async fn prepare(
        &self,
        from: &Address,
        to: &Address,
        eight_bit: bool,
    ) -> Result<Ready, SmtpError> {
        let clock = Clock::start(self.limits);
        let mut conn = clock
            .within(Phase::Connect, |l| l.connect, self.connect(&clock))
            .await?;
        let prepared: Result<(), SmtpError> = async {
            if let Some(credentials) = &self.credentials {
                let auth = conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials);
                clock.within(Phase::Auth, |l| l.command, auth).await?;
            }
            // lettre encodes every body as 7-bit text; should a message carry
            // 8-bit bytes all the same, it says so, as lettre's own send does.
            let mut options = Vec::new();
            if eight_bit {
                options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
            }
            // An address stored before addresses had to be ASCII: sent where
            // the server takes SMTPUTF8, refused for this recipient where not.
            if !(AsRef::<str>::as_ref(from).is_ascii() && AsRef::<str>::as_ref(to).is_ascii()) {
                if !conn.server_info().supports_feature(Extension::SmtpUtfEight) {
                    return Err(SmtpError::Undeliverable(
                        "a non-ASCII address, and the server does not take SMTPUTF8",
                    ));
                }
                options.push(MailParameter::SmtpUtfEight);
            }
            let utf8 = options.contains(&MailParameter::SmtpUtfEight);
            let mail = conn.command(Mail::new(Some(from.clone()), options));
            match clock.within(Phase::MailFrom, |l| l.command, mail).await {
                // A refusal of SMTPUTF8 is about this message's address,
                // not the sender: final, or it would be retried forever.
                Err(SmtpError::Exchange { source, .. }) if utf8 && source.is_permanent() => {
                    return Err(SmtpError::Undeliverable(
                        "the server refused SMTPUTF8 for this non-ASCII address",
                    ));
                }
                mail => mail?,
            };
            let rcpt = conn.command(Rcpt::new(to.clone(), vec![]));
            clock.within(Phase::RcptTo, |l| l.command, rcpt).await?;
            clock
                .within(Phase::Data, |l| l.command, conn.command(Data))
                .await?;
            Ok(())
        }
        .await;
        match prepared {
            Ok(()) => Ok(Ready { conn, clock }),
            Err(e) => {
                goodbye(conn);
                Err(e)
            }
        }
    }

    async fn connect(
        &self,
        clock: &Clock,
    ) -> Result<AsyncSmtpConnection, lettre::transport::smtp::Error> {
        let wrapper = match &self.security {
            Security::Wrapper(tls) => Some(tls.clone()),
            _ => None,
        };
        // Per address the host resolves to: one that drops packets leaves
        // time for the next.
        let per_address = clock.limits.map(|l| l.connect / 3);
        let mut conn = AsyncSmtpConnection::connect_tokio1(
            (self.host.as_str(), self.port),
            per_address,
            &self.hello,
            wrapper,
            None,
        )
        .await?;
        match &self.security {
            Security::Required(tls) => conn.starttls(tls.clone(), &self.hello).await?,
            Security::Opportunistic(tls) if conn.can_starttls() => {
                conn.starttls(tls.clone(), &self.hello).await?
            }
            _ => {}
        }
        Ok(conn)
    }
}

/// An exchange at DATA's 354: the server waits for the message.
pub struct Ready {
    conn: AsyncSmtpConnection,
    clock: Clock,
}

impl Ready {
    /// Writes `message` (the whole formatted message) and its final dot, then
    /// waits for the reply. A failure before the dot is an ordinary failure
    /// (nothing was delivered); no reply after it is
    /// [`SmtpError::OutcomeUnknown`]; a reply is the outcome.
    pub async fn hand_over(mut self, message: &[u8]) -> Result<(), SmtpError> {
        let outcome = {
            let (written, body_done) = tokio::sync::oneshot::channel();
            let reply = self.conn.message_iter(SignalAtEnd {
                part: Some(message),
                done: Some(written),
            });
            tokio::pin!(reply);
            // Until the body is written: the data limit, within the exchange's.
            let before_dot = async {
                tokio::select! {
                    biased;
                    ended = &mut reply => Some(ended),
                    // The sender is dropped unsent only once `reply` ended.
                    _ = body_done => None,
                }
            };
            match self
                .clock
                .within_no_error(Phase::Message, |l| l.data, before_dot)
                .await
            {
                Err(e) => Err(e),
                // Ended before the body was written: the write failed.
                Ok(Some(ended)) => ended.map(drop).map_err(|source| SmtpError::Exchange {
                    phase: Phase::Message,
                    source,
                }),
                Ok(None) => final_reply(self.clock.limits, reply).await,
            }
        };
        goodbye(self.conn);
        outcome
    }
}

/// Waits for the reply to the final dot, at most `limits.final_reply`.
async fn final_reply(
    limits: Option<SmtpLimits>,
    reply: impl Future<
        Output = Result<
            lettre::transport::smtp::response::Response,
            lettre::transport::smtp::Error,
        >,
    >,
) -> Result<(), SmtpError> {
    let waited = match limits {
        Some(l) => tokio::time::timeout(l.final_reply, reply)
            .await
            .map_err(|_| l.final_reply),
        None => Ok(reply.await),
    };
    match waited {
        Ok(Ok(_)) => Ok(()),
        // A reply: the server said what became of the message.
        Ok(Err(source)) if source.status().is_some() => Err(SmtpError::Exchange {
            phase: Phase::EndOfData,
            source,
        }),
        Ok(Err(broken)) => Err(SmtpError::OutcomeUnknown(format!(
            "the link broke after the final dot: {broken}"
        ))),
        Err(after) => Err(SmtpError::OutcomeUnknown(format!(
            "no reply to the final dot within {after:?}"
        ))),
    }
}

/// The message as one part, telling `done` once lettre asked past it, that
/// is, once the whole body is written and only the final dot is left.
struct SignalAtEnd<'a> {
    part: Option<&'a [u8]>,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

impl<'a> Iterator for SignalAtEnd<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let part = self.part.take();
        if part.is_none()
            && let Some(done) = self.done.take()
        {
            let _ = done.send(());
        }
        part
    }
}

/// The goodbye is not part of the outcome: said in the background, briefly,
/// so a slow reply to QUIT can neither delay the send nor turn it into a
/// timeout (and a second copy).
fn goodbye(mut conn: AsyncSmtpConnection) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(GOODBYE_LIMIT, conn.quit()).await;
    });
}

/// The time of one send: when it began, and its limits.
struct Clock {
    started: Instant,
    limits: Option<SmtpLimits>,
}

impl Clock {
    fn start(limits: Option<SmtpLimits>) -> Self {
        Self {
            started: Instant::now(),
            limits,
        }
    }

    /// Runs `step` of `phase` within its limit (`limit` of the limits), cut
    /// to what is left of the exchange's.
    async fn within<T>(
        &self,
        phase: Phase,
        limit: impl Fn(&SmtpLimits) -> Duration,
        step: impl Future<Output = Result<T, lettre::transport::smtp::Error>>,
    ) -> Result<T, SmtpError> {
        self.within_no_error(phase, limit, step)
            .await?
            .map_err(|source| SmtpError::Exchange { phase, source })
    }

    async fn within_no_error<T>(
        &self,
        phase: Phase,
        limit: impl Fn(&SmtpLimits) -> Duration,
        step: impl Future<Output = T>,
    ) -> Result<T, SmtpError> {
        let Some(limits) = &self.limits else {
            return Ok(step.await);
        };
        let left = limits.exchange.saturating_sub(self.started.elapsed());
        let after = limit(limits).min(left);
        tokio::time::timeout(after, step)
            .await
            .map_err(|_| SmtpError::TimedOut { phase, after })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_about_the_recipient_or_the_message_are_for_good() {
        let shown = |code: &str, text: &str| format!("permanent error ({code}): {text}");
        // About this mailbox.
        for (code, text) in [
            ("550", "5.1.1 mailbox unavailable"),
            ("551", "user not local"),
            ("553", "mailbox name not allowed"),
            ("554", "5.1.0 address rejected"),
            ("550", "mailbox unavailable"),
        ] {
            assert!(
                refused_for_good(Phase::RcptTo, code, &shown(code, text)),
                "{code} {text}"
            );
        }
        // About this message.
        assert!(refused_for_good(
            Phase::EndOfData,
            "554",
            &shown("554", "5.6.0 bad content")
        ));
        // About the sender: the account, its password, its quota, its policy.
        for (phase, code, text) in [
            (Phase::Connect, "554", "5.7.1 no service for you"),
            (Phase::Auth, "535", "5.7.8 authentication failed"),
            (
                Phase::MailFrom,
                "554",
                "5.7.1 Sending paused for this account",
            ),
            (Phase::MailFrom, "550", "5.4.5 daily sending quota exceeded"),
            (Phase::MailFrom, "530", "5.7.0 must issue STARTTLS first"),
            (Phase::RcptTo, "554", "5.7.1 relay access denied"),
            (
                Phase::RcptTo,
                "553",
                "5.7.1 Sender address rejected: not owned by user",
            ),
            (
                Phase::RcptTo,
                "550",
                "5.1.8 Sender address rejected: Domain not found",
            ),
            (
                Phase::RcptTo,
                "550",
                "5.7.606 Access denied, banned sending IP",
            ),
            (Phase::Data, "554", "transaction failed"),
            (Phase::EndOfData, "554", "5.7.1 rejected by policy"),
        ] {
            assert!(
                !refused_for_good(phase, code, &shown(code, text)),
                "{phase} {code} {text}"
            );
        }
    }

    #[test]
    fn enhanced_codes_are_read_from_the_reply() {
        assert_eq!(
            enhanced_status("permanent error (550): 5.1.1 mailbox unavailable"),
            Some("5.1.1")
        );
        assert_eq!(
            enhanced_status("permanent error (554): Sending paused"),
            None
        );
        assert_eq!(enhanced_status("network error: reset"), None);
    }

    #[test]
    fn urls_are_read_as_lettre_reads_them() {
        let s = SmtpServer::from_url("smtp://u:p%40ss@mail.example:2525/bank.example").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("mail.example", 2525));
        assert!(matches!(s.security, Security::Plain));
        assert!(s.credentials.is_some());
        assert!(matches!(s.hello, ClientId::Domain(ref d) if d == "bank.example"));
        let s = SmtpServer::from_url("smtp://mail.example?tls=required").unwrap();
        assert_eq!(s.port, 587);
        assert!(matches!(s.security, Security::Required(_)));
        assert_eq!(
            SmtpServer::from_url("smtps://mail.example").unwrap().port,
            465
        );
        assert!(SmtpServer::from_url("ftp://u:secret@mail").is_err());
        assert!(
            !SmtpServer::from_url("ftp://u:secret@mail")
                .err()
                .unwrap()
                .to_string()
                .contains("secret")
        );
    }
}
