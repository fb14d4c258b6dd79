//! Input rules of the sign-up and verification requests (the same as the Go
//! service's): every violated field is reported, not just the first. A request
//! that passes becomes a [`SignUp`], so code past this point cannot be handed
//! unchecked input.

use serde::Serialize;
use utoipa::ToSchema;

/// One rule a field broke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// Collects violations field by field.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn check(&mut self, field: &str, result: Result<(), String>) -> &mut Self {
        if let Err(description) = result {
            self.0.push(FieldViolation {
                field: field.to_owned(),
                description,
            });
        }
        self
    }

    /// `Ok` when nothing was violated.
    pub fn finish(self) -> Result<(), Vec<FieldViolation>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

/// A sign-up whose every field passed its rules. The fields are private, so
/// the only way to one is [`SignUp::parse`]; its `Debug` never shows the
/// password.
#[derive(Clone)]
pub struct SignUp {
    username: String,
    full_name: String,
    email: String,
    password: String,
}

impl std::fmt::Debug for SignUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignUp")
            .field("username", &self.username)
            .field("full_name", &self.full_name)
            .field("email", &self.email)
            .field("password", &"[redacted]")
            .finish()
    }
}

impl SignUp {
    /// Checks every field; all violations at once, or the parsed sign-up.
    pub fn parse(
        username: String,
        full_name: String,
        email: String,
        password: String,
    ) -> Result<Self, Vec<FieldViolation>> {
        let mut v = Violations::default();
        v.check("username", self::username(&username))
            .check("full_name", self::full_name(&full_name))
            .check("email", self::new_email(&email))
            .check("password", self::password(&password));
        v.finish()?;
        Ok(Self {
            username,
            full_name,
            email,
            password,
        })
    }

    pub fn username(&self) -> &str {
        &self.username
    }

    pub fn full_name(&self) -> &str {
        &self.full_name
    }

    pub fn email(&self) -> &str {
        &self.email
    }

    /// The plaintext password, to check against an account's hash.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Takes the plaintext password out, for hashing: no copy stays behind.
    pub fn take_password(&mut self) -> String {
        std::mem::take(&mut self.password)
    }
}

pub fn length(value: &str, min: usize, max: usize) -> Result<(), String> {
    let n = value.chars().count();
    if n < min || n > max {
        return Err(format!("must contain from {min}-{max} characters"));
    }
    Ok(())
}

pub fn username(value: &str) -> Result<(), String> {
    length(value, 3, 100)?;
    if !value
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err("must contain only lowercase letters, digits, or underscore".into());
    }
    Ok(())
}

pub fn full_name(value: &str) -> Result<(), String> {
    length(value, 3, 100)?;
    if !value.chars().all(|c| c.is_alphabetic() || c == ' ') {
        return Err("must contain only letters or spaces".into());
    }
    Ok(())
}

pub fn email(value: &str) -> Result<(), String> {
    length(value, 3, 200)?;
    // A bare address only: no display name, no comments.
    if value
        .parse::<email_address::EmailAddress>()
        .map(|a| a.email() == value)
        != Ok(true)
    {
        return Err("is not a valid email address".into());
    }
    Ok(())
}

/// The address of a new account: valid, and ASCII. A non-ASCII address
/// needs SMTPUTF8 from every server on its way, which the service cannot
/// know at sign-up; a server without it refuses the address on every
/// attempt. Refused here instead, where the person can still correct it; an
/// internationalised domain is accepted in its ASCII (xn--) form. (Accounts
/// made before this rule keep their address: the mailer asks for SMTPUTF8
/// where the server offers it, and such a refusal is final for that
/// recipient.)
pub fn new_email(value: &str) -> Result<(), String> {
    email(value)?;
    if !value.is_ascii() {
        return Err("must be ASCII (write an internationalised domain in its xn-- form)".into());
    }
    Ok(())
}

pub fn password(value: &str) -> Result<(), String> {
    length(value, 6, 100)
}

pub fn positive_id(value: i64) -> Result<(), String> {
    if value < 1 {
        return Err("must be a positive integer".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sign_up_never_shows_its_password() {
        let mut signup = SignUp::parse(
            "alice".into(),
            "Alice Liddell".into(),
            "alice@example.com".into(),
            "hunter2-secret".into(),
        )
        .unwrap();
        let shown = format!("{signup:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("alice@example.com"), "{shown}");
        assert_eq!(signup.take_password(), "hunter2-secret");
        assert_eq!(signup.take_password(), "", "taken, not copied");
    }

    #[test]
    fn usernames() {
        assert!(username("alice_1").is_ok());
        assert!(username("al").is_err());
        assert!(username("Alice").is_err());
        assert!(username("al ice").is_err());
        assert!(username(&"a".repeat(101)).is_err());
    }

    #[test]
    fn full_names_accept_unicode_letters() {
        assert!(full_name("Zoë Ångström").is_ok());
        assert!(full_name("Nguyễn Văn A").is_ok());
        assert!(full_name("R2 D2").is_err());
        assert!(full_name("ab").is_err());
    }

    #[test]
    fn emails() {
        assert!(email("alice@example.com").is_ok());
        assert!(email("alice").is_err());
        assert!(email("Alice <alice@example.com>").is_err());
        assert!(email("a@").is_err());
        // A new account's address is ASCII (no SMTPUTF8 needed on its way);
        // an existing one is still a valid address.
        assert!(new_email("jösé@example.com").is_err());
        assert!(new_email("jose@bücher.example").is_err());
        assert!(new_email("jose@xn--bcher-kva.example").is_ok());
        assert!(email("jösé@example.com").is_ok());
    }

    #[test]
    fn a_sign_up_reports_every_violation_at_once() {
        let errs =
            SignUp::parse("A".into(), "Alice".into(), "a@b.co".into(), "123".into()).unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["username", "password"]);
        let ok = SignUp::parse(
            "alice".into(),
            "Alice".into(),
            "alice@example.com".into(),
            "secret123".into(),
        )
        .unwrap();
        assert_eq!(ok.username, "alice");
    }
}
