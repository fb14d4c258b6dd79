//! The sign-up use cases: creating an account, and sending its verification
//! link again. Each writes its rows and its verify-email task through the
//! [`Outbox`], so the task commits with them and the relays are woken after.
//! HTTP parses the request, calls these, and maps their errors.

use std::time::Duration;

use super::{
    User,
    password::{HashError, PasswordHasher},
    repo::{self, CreateUserError},
    validation::SignUp,
    verify_email::{self, Resend},
};
use crate::{config::SignupConfig, outbox::Outbox, tasks::send_verify_email};

#[derive(Debug, thiserror::Error)]
pub enum SignUpError {
    #[error(transparent)]
    Create(#[from] CreateUserError),
    #[error(transparent)]
    Hash(#[from] HashError),
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
}

impl SignUps {
    pub fn new(outbox: Outbox, hasher: PasswordHasher, cfg: SignupConfig) -> Self {
        Self {
            outbox,
            hasher,
            cfg,
        }
    }

    /// Creates the account and its verify-email task in one transaction.
    pub async fn create(
        &self,
        mut signup: SignUp,
        request_id: Option<String>,
    ) -> Result<User, SignUpError> {
        let pool = self.outbox.pool();
        // Cheap checks first: a taken name or address costs no hash.
        if let Some(taken) = repo::taken(pool, signup.username(), signup.email()).await? {
            return Err(CreateUserError::Taken(taken).into());
        }
        let hashed = self.hasher.hash(signup.take_password()).await?;
        let task = send_verify_email::task(&self.cfg, signup.username()).caused_by(request_id);
        let mut tx = self.outbox.begin().await?;
        let user = repo::insert(&mut tx, &signup, &hashed).await?;
        let task_id = tx.insert(&task).await?;
        tx.commit().await?;
        tracing::info!(username = %user.username, task_id = task_id.get(), "user created");
        Ok(user)
    }

    /// Asks for a new verification link to `email` (already checked to be an
    /// address), at most once per `VERIFY_EMAIL_RESEND_INTERVAL` per address,
    /// whether or not the address belongs to anyone.
    pub async fn resend_link(
        &self,
        email: &str,
        request_id: Option<String>,
    ) -> Result<Resend, sqlx::Error> {
        let task =
            |username: &str| send_verify_email::task(&self.cfg, username).caused_by(request_id);
        let outcome =
            verify_email::request_resend(&self.outbox, email, self.resend_interval(), task).await?;
        if let Resend::Queued { task_id } = outcome {
            tracing::info!(task_id = task_id.get(), "verification link sent again");
        }
        Ok(outcome)
    }

    /// The shortest time between two requests for a new link to one address.
    pub fn resend_interval(&self) -> Duration {
        self.cfg.verify_email_resend_interval
    }
}
