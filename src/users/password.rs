//! Password hashing with argon2id. Hashing costs tens of milliseconds of CPU
//! and `ARGON2_MEMORY_KIB` of memory by design, so it runs on the blocking
//! pool, off the async runtime, and at most `ARGON2_MAX_CONCURRENT` at once:
//! unbounded, a few hundred concurrent sign-ups took gigabytes. A request
//! that finds no free slot within `ARGON2_QUEUE_WAIT` is refused as busy
//! (503 with Retry-After) rather than queued without end.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use argon2::{
    Algorithm, Argon2, Block, Params, Version,
    password_hash::{Output, ParamsString, PasswordHash, SaltString},
};
use rand::Rng;
use tokio::sync::Semaphore;

use crate::{
    config::SignupConfig,
    metrics::{self, Refusal},
};

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("invalid argon2 parameters: {0}")]
    Params(argon2::Error),
    #[error("hashing failed: {0}")]
    Hash(argon2::password_hash::Error),
    #[error("hashing task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// Every hashing slot stayed busy for the whole wait.
    #[error("too many sign-ups at once")]
    Busy { retry_after: Duration },
}

/// Hashes passwords with fixed argon2id parameters, a bounded number at once.
///
/// Each hash works in a memory buffer of `ARGON2_MEMORY_KIB` that is kept
/// and reused, one per slot, rather than allocated per hash: freed on one
/// blocking thread and allocated on another, the allocator kept a buffer per
/// thread, and ten sign-ups left 170 MiB behind.
#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    slots: Arc<Semaphore>,
    /// Free buffers; never more than there are slots.
    buffers: Arc<Mutex<Vec<Vec<Block>>>>,
    wait: Duration,
}

impl PasswordHasher {
    pub fn new(cfg: &SignupConfig) -> Result<Self, HashError> {
        let params = Params::new(
            cfg.argon2_memory_kib,
            cfg.argon2_iterations,
            cfg.argon2_parallelism,
            None,
        )
        .map_err(HashError::Params)?;
        Ok(Self {
            params,
            slots: Arc::new(Semaphore::new(cfg.argon2_max_concurrent())),
            buffers: Arc::default(),
            wait: cfg.argon2_queue_wait,
        })
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// The PHC string (`$argon2id$v=19$m=...`) of `password` with a fresh salt.
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        self.on_slot(move |argon2, params, blocks| {
            phc_hash(argon2, params, password.as_bytes(), blocks)
        })
        .await
    }

    /// Whether `password` is the one `phc` (a PHC string of this hasher's
    /// parameters) hashes: hashed again with its salt, on a slot and in a
    /// kept buffer like a new hash, and compared in constant time. A hash of
    /// other parameters (settings changed since) is checked by argon2's own
    /// verifier, which allocates its memory.
    pub async fn verify(&self, password: String, phc: String) -> Result<bool, HashError> {
        self.on_slot(move |argon2, params, blocks| {
            let parsed = PasswordHash::new(&phc).map_err(HashError::Hash)?;
            let ours = Params::try_from(&parsed).is_ok_and(|p| p == *params);
            let (Some(salt), Some(expected), true) = (parsed.salt, parsed.hash, ours) else {
                use argon2::PasswordVerifier;
                return Ok(argon2.verify_password(password.as_bytes(), &parsed).is_ok());
            };
            let mut raw_salt = [0u8; 64];
            let raw_salt = salt.decode_b64(&mut raw_salt).map_err(HashError::Hash)?;
            let output = Output::init_with(expected.len(), |out| {
                Ok(argon2.hash_password_into_with_memory(
                    password.as_bytes(),
                    raw_salt,
                    out,
                    &mut *blocks,
                )?)
            })
            .map_err(HashError::Hash)?;
            // Output's equality is constant-time.
            Ok(output == expected)
        })
        .await
    }

    /// Runs `work` on a hashing slot (waiting at most ARGON2_QUEUE_WAIT) and
    /// a thread of the blocking pool, in a kept memory buffer.
    async fn on_slot<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Argon2<'static>, &Params, &mut [Block]) -> Result<T, HashError>
        + Send
        + 'static,
    ) -> Result<T, HashError> {
        let busy = HashError::Busy {
            retry_after: self.wait.max(Duration::from_secs(1)),
        };
        let slot = tokio::time::timeout(self.wait, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| {
                metrics::edge_refused(Refusal::HashingBusy);
                busy
            })?
            .expect("the semaphore is never closed");
        let argon2 = self.argon2();
        let (params, buffers) = (self.params.clone(), self.buffers.clone());
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let free = || buffers.lock().unwrap_or_else(|p| p.into_inner());
            // A slot is held, so at most as many buffers exist as slots.
            let mut blocks = free()
                .pop()
                .unwrap_or_else(|| vec![Block::default(); params.block_count()]);
            let done = work(&argon2, &params, &mut blocks);
            free().push(blocks);
            done
        })
        .await?
    }
}

/// The PHC string (`$argon2id$v=19$m=...$salt$hash`) of `password` with a
/// fresh salt, hashed in `blocks`.
fn phc_hash(
    argon2: &Argon2<'_>,
    params: &Params,
    password: &[u8],
    blocks: &mut [Block],
) -> Result<String, HashError> {
    // A salt must be unique, not secret: the thread's CSPRNG (seeded from the
    // OS) serves, without a getrandom call per sign-up.
    let raw_salt: [u8; 16] = rand::rng().random();
    let salt = SaltString::encode_b64(&raw_salt).map_err(HashError::Hash)?;
    let len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let output = Output::init_with(len, |out| {
        Ok(argon2.hash_password_into_with_memory(password, &raw_salt, out, &mut *blocks)?)
    })
    .map_err(HashError::Hash)?;
    let phc = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(HashError::Hash)?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

#[cfg(test)]
mod tests {
    use argon2::{PasswordHasher as _, PasswordVerifier};

    use super::*;

    #[tokio::test]
    async fn hashes_verify_with_the_standard_verifier_and_buffers_are_reused() {
        let params = Params::new(64, 1, 1, None).unwrap();
        let hasher = PasswordHasher {
            params,
            slots: Arc::new(Semaphore::new(2)),
            buffers: Arc::default(),
            wait: Duration::from_secs(1),
        };
        let first = hasher.hash("secret123".into()).await.unwrap();
        let second = hasher.hash("secret123".into()).await.unwrap();
        assert_ne!(first, second, "a fresh salt each time");
        for phc in [&first, &second] {
            assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
            let parsed = PasswordHash::new(phc).unwrap();
            assert!(
                Argon2::default()
                    .verify_password(b"secret123", &parsed)
                    .is_ok()
            );
            assert!(
                Argon2::default()
                    .verify_password(b"secret124", &parsed)
                    .is_err()
            );
        }
        assert_eq!(
            hasher.buffers.lock().unwrap().len(),
            1,
            "one buffer, reused"
        );
        // Its own hashes verify in the kept buffer; others through argon2.
        assert!(
            hasher
                .verify("secret123".into(), first.clone())
                .await
                .unwrap()
        );
        assert!(!hasher.verify("secret124".into(), first).await.unwrap());
        let other = Argon2::default()
            .hash_password(b"secret123", &SaltString::encode_b64(&[7; 16]).unwrap())
            .unwrap()
            .to_string();
        assert!(
            hasher
                .verify("secret123".into(), other.clone())
                .await
                .unwrap()
        );
        assert!(!hasher.verify("secret124".into(), other).await.unwrap());
        assert_eq!(hasher.buffers.lock().unwrap().len(), 1, "still one buffer");
    }
}
