//! `Idempotency-Key` on a sign-up and on a request for a new link, as the IETF draft "The Idempotency-Key
//! HTTP Header Field" describes it: a retry with the same key and the same
//! request within IDEMPOTENCY_TTL gets the first answer, without a second
//! account or email; the same key with another request is refused (422); a
//! retry while the first is still in its transaction is refused (409). The
//! key is written in the sign-up's own transaction, so a reply lost after the
//! commit is always safe to retry, and a rolled-back sign-up leaves no key.

use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

/// The longest key accepted.
pub const MAX_KEY_LEN: usize = 255;

/// A request's key and what identifies the request.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    endpoint: &'static str,
    key: String,
    /// sha256 of the request's fields but the password.
    request_hash: Vec<u8>,
}

/// Why a header value is no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Idempotency-Key must be 1-255 visible ASCII characters (optionally in double quotes)")]
pub struct BadKey;

/// What a key already answered.
#[derive(Debug)]
pub enum Prior {
    /// Nothing within IDEMPOTENCY_TTL: handle the request.
    New,
    /// The same request got `response`. For a sign-up, the user it created,
    /// whose password hash is `hashed_password`: the password must match it
    /// too. `None` for a request that made no account (a resend).
    Answered {
        response: serde_json::Value,
        hashed_password: Option<String>,
    },
    /// Another request used the key.
    Mismatch,
}

impl IdempotencyKey {
    /// The key in `header` (an sf-string: quotes allowed) for a request to
    /// `endpoint` made of `fields` (the password left out).
    pub fn new(endpoint: &'static str, header: &str, fields: &[&str]) -> Result<Self, BadKey> {
        // `"abc"` is the key abc; `""` and `"` are keys of their own.
        let key = match header.strip_prefix('"').and_then(|k| k.strip_suffix('"')) {
            Some(inner) if !inner.is_empty() => inner,
            _ => header,
        };
        let visible = key.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
        if key.is_empty() || key.len() > MAX_KEY_LEN || !visible {
            return Err(BadKey);
        }
        let mut digest = Sha256::new();
        for field in fields {
            // Length-prefixed: ("ab", "c") and ("a", "bc") differ.
            digest.update((field.len() as u64).to_be_bytes());
            digest.update(field.as_bytes());
        }
        Ok(Self {
            endpoint,
            key: key.to_owned(),
            request_hash: digest.finalize().to_vec(),
        })
    }

    /// What the key answered within `ttl`.
    pub async fn prior(
        &self,
        conn: &mut PgConnection,
        ttl: Duration,
    ) -> Result<Prior, sqlx::Error> {
        let row = sqlx::query_file!(
            "sql/idempotency/prior.sql",
            self.endpoint,
            self.key,
            ttl.as_secs_f64()
        )
        .fetch_optional(conn)
        .await?;
        Ok(match row {
            None => Prior::New,
            Some(r) if r.request_hash != self.request_hash => Prior::Mismatch,
            // The account it created expired since: the key is spent.
            Some(r) if r.made_account && r.hashed_password.is_none() => Prior::Mismatch,
            Some(r) => Prior::Answered {
                response: r.response,
                hashed_password: r.hashed_password,
            },
        })
    }

    /// [`IdempotencyKey::prior`] on a pooled connection.
    pub async fn prior_in(&self, pool: &PgPool, ttl: Duration) -> Result<Prior, sqlx::Error> {
        self.prior(&mut *pool.acquire().await?, ttl).await
    }

    /// Takes the key for this transaction; `false`: another holds it.
    pub async fn lock(&self, conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
        sqlx::query_file_scalar!("sql/idempotency/lock.sql", self.endpoint, self.key)
            .fetch_one(conn)
            .await
    }

    /// Records that this request was answered `response` (and created
    /// `username`, for a sign-up), in its transaction.
    pub async fn record(
        &self,
        conn: &mut PgConnection,
        username: Option<&str>,
        response: &serde_json::Value,
    ) -> Result<(), sqlx::Error> {
        sqlx::query_file!(
            "sql/idempotency/record.sql",
            self.endpoint,
            self.key,
            self.request_hash,
            username,
            response
        )
        .execute(conn)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_and_requests_told_apart() {
        let key = |h: &str, f: &[&str]| IdempotencyKey::new("create_user", h, f);
        assert_eq!(key("\"abc-1\"", &["a"]).unwrap().key, "abc-1");
        assert_eq!(key("abc-1", &["a"]).unwrap().key, "abc-1");
        assert_eq!(key("\"\"", &["a"]).unwrap().key, "\"\"");
        for bad in ["", "tab\there", "zoë"] {
            assert_eq!(key(bad, &["a"]).err(), Some(BadKey), "{bad:?}");
        }
        assert_eq!(key(&"k".repeat(256), &["a"]).err(), Some(BadKey));
        let hash = |f: &[&str]| key("k", f).unwrap().request_hash;
        assert_eq!(hash(&["ab", "c"]), hash(&["ab", "c"]));
        assert_ne!(hash(&["ab", "c"]), hash(&["a", "bc"]));
    }
}
