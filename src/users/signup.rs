//! The sign-up use cases: creating an account, and sending its verification
//! link again. Each writes its rows and its verify-email task through the
//! [`Outbox`], so the task commits with them and the relays are woken after.
//! HTTP parses the request, calls these, and maps their errors.

use std::time::Duration;

use super::{
    User,
    idempotency::{IdempotencyKey, Prior},
    mailbox,
    password::{HashError, PasswordHasher},
    repo::{self, CreateUserError},
    validation::SignUp,
    verify_email::{self, Resend},
};
use tracing::Instrument;

use crate::{config::SignupConfig, outbox::Outbox, tasks::send_verify_email, telemetry};

#[derive(Debug, thiserror::Error)]
pub enum SignUpError {
    #[error(transparent)]
    Create(#[from] CreateUserError),
    #[error(transparent)]
    Hash(#[from] HashError),
    /// The Idempotency-Key answered another request (or its account expired).
    #[error("this Idempotency-Key was used for another request")]
    KeyReused,
    /// A request with the Idempotency-Key is being handled now.
    #[error("a request with this Idempotency-Key is in progress; retry shortly")]
    KeyInProgress,
    /// The address is another spelling of a mailbox (a `+tag`, Gmail's dots)
    /// that was sent as many emails as it may have for now.
    #[error("this mailbox was sent too many emails; try again later")]
    MailboxBusy { retry_after: Duration },
}

fn replayed(first: User) -> SignedUp {
    tracing::info!(username = %first.username, "sign-up retried with its Idempotency-Key: first answer");
    SignedUp::Replayed(first)
}

/// What a sign-up did.
#[derive(Debug)]
pub enum SignedUp {
    /// Created the account.
    Created(User),
    /// A retry with the key of a sign-up that created this account: its
    /// first answer, nothing done again.
    Replayed(User),
}

impl From<sqlx::Error> for SignUpError {
    fn from(e: sqlx::Error) -> Self {
        Self::Create(CreateUserError::Db(e))
    }
}

/// What the sign-up use cases need; cheap to clone.
#[derive(Clone)]
pub struct SignUps {
    outbox: Outbox,
    hasher: PasswordHasher,
    cfg: SignupConfig,
    /// How long an Idempotency-Key answers its retries.
    idempotency_ttl: Duration,
}

impl SignUps {
    pub fn new(
        outbox: Outbox,
        hasher: PasswordHasher,
        cfg: SignupConfig,
        idempotency_ttl: Duration,
    ) -> Self {
        Self {
            outbox,
            hasher,
            cfg,
            idempotency_ttl,
        }
    }

    /// Creates the account and its verify-email task in one transaction;
    /// with `key`, records the key in it too, and answers a retry of the same
    /// request with the first answer (see [`super::idempotency`]).
    pub async fn create(
        &self,
        mut signup: SignUp,
        request_id: Option<String>,
        key: Option<&IdempotencyKey>,
    ) -> Result<SignedUp, SignUpError> {
        let pool = self.outbox.pool();
        if let Some(key) = key
            && let Some(first) = self.first_answer(key, signup.password()).await?
        {
            return Ok(replayed(first));
        }
        // Cheap checks first: a taken name or address costs no hash.
        if let Some(taken) = repo::taken(pool, signup.username(), signup.email()).await? {
            // Taken by this request's twin, committed since the look above?
            if let Some(key) = key
                && let Some(first) = self.first_answer(key, signup.password()).await?
            {
                return Ok(replayed(first));
            }
            return Err(CreateUserError::Taken(taken).into());
        }
        // With a key, the password is kept for the look inside the
        // transaction; it goes with this call.
        let password_for_key = key.map(|_| signup.password().to_owned());
        let hashed = self.hasher.hash(signup.take_password()).await?;
        let task = send_verify_email::task(&self.cfg, signup.username()).caused_by(request_id);
        self.write(signup, hashed, task, key, password_for_key)
            .instrument(telemetry::transaction_span(
                "sign-up",
                "INSERT users outbox",
            ))
            .await
    }

    /// The sign-up's transaction: the key's look, the account, its task and
    /// the key's record, committed together.
    async fn write(
        &self,
        signup: SignUp,
        hashed: String,
        task: crate::outbox::NewTask,
        key: Option<&IdempotencyKey>,
        password_for_key: Option<String>,
    ) -> Result<SignedUp, SignUpError> {
        let mut tx = self.outbox.begin().await?;
        if let (Some(key), Some(password)) = (key, password_for_key) {
            // A twin of this request holds the key now: 409. One that
            // committed since the look above: its answer.
            if !key.lock(&mut tx).await? {
                return Err(SignUpError::KeyInProgress);
            }
            let prior = key.prior(&mut tx, self.idempotency_ttl).await?;
            if let Some(first) = self.judge(prior, &password).await? {
                return Ok(replayed(first));
            }
        }
        // Another spelling of a mailbox is a way to send it one more email:
        // counted with its links ([`verify_email::claim_send`]). A plain
        // address can have one account at a time, and its email is not.
        if mailbox::is_folded(signup.email())
            && let Some(retry_after) =
                verify_email::claim_send(&mut tx, signup.email(), self.cfg.resend_limits()).await?
        {
            return Err(SignUpError::MailboxBusy { retry_after });
        }
        let user = repo::insert(&mut tx, &signup, &hashed).await?;
        let task_id = tx.insert(&task).await?;
        if let Some(key) = key {
            let response = serde_json::to_value(&user).expect("a user serializes");
            key.record(&mut tx, Some(&user.username), &response).await?;
        }
        tx.commit().await?;
        tracing::info!(username = %user.username, task_id = task_id.get(), "user created");
        Ok(SignedUp::Created(user))
    }

    /// The first answer to `key`, when it answered this very request (the
    /// same fields, and a `password` the account's hash accepts).
    async fn first_answer(
        &self,
        key: &IdempotencyKey,
        password: &str,
    ) -> Result<Option<User>, SignUpError> {
        let prior = key
            .prior_in(self.outbox.pool(), self.idempotency_ttl)
            .await?;
        self.judge(prior, password).await
    }

    /// What `prior` means for a request with `password`: nothing yet, its
    /// first answer, or another request's key (422).
    async fn judge(&self, prior: Prior, password: &str) -> Result<Option<User>, SignUpError> {
        match prior {
            Prior::New => Ok(None),
            Prior::Mismatch => Err(SignUpError::KeyReused),
            Prior::Answered {
                response,
                hashed_password,
            } => {
                // A key of a request that made no account: not a sign-up's.
                let Some(hashed_password) = hashed_password else {
                    return Err(SignUpError::KeyReused);
                };
                let same = self
                    .hasher
                    .verify(password.to_owned(), hashed_password)
                    .await?;
                if !same {
                    return Err(SignUpError::KeyReused);
                }
                let user: User = serde_json::from_value(response).map_err(|e| {
                    SignUpError::Create(CreateUserError::Db(sqlx::Error::Decode(e.into())))
                })?;
                Ok(Some(user))
            }
        }
    }

    /// Asks for a new verification link to `email` (already checked to be an
    /// address), within VERIFY_EMAIL_RESEND_MAX, _INTERVAL and _WINDOW per
    /// mailbox, whether or not the address belongs to anyone.
    pub async fn resend_link(
        &self,
        email: &str,
        request_id: Option<String>,
        key: Option<&IdempotencyKey>,
    ) -> Result<Resend, sqlx::Error> {
        let ttl = self.idempotency_ttl;
        if let Some(key) = key {
            match key.prior_in(self.outbox.pool(), ttl).await? {
                Prior::New => {}
                Prior::Answered { .. } => return Ok(Resend::Replayed),
                Prior::Mismatch => return Ok(Resend::KeyReused),
            }
        }
        let task =
            |username: &str| send_verify_email::task(&self.cfg, username).caused_by(request_id);
        let outcome = verify_email::request_resend(
            &self.outbox,
            email,
            self.cfg.resend_limits(),
            task,
            key.map(|k| (k, ttl)),
        )
        .instrument(telemetry::transaction_span(
            "new link",
            "INSERT verify_email_resend_limits outbox",
        ))
        .await?;
        if let Resend::Queued { task_id } = outcome {
            tracing::info!(task_id = task_id.get(), "verification link sent again");
        }
        Ok(outcome)
    }
}
