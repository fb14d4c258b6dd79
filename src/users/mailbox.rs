//! The mailbox an address delivers to, as far as it can be known from the
//! address alone: the key the limits on emailing one mailbox are counted
//! under. It is never used to deliver, nor to tell two accounts apart.
//!
//! - Case is ignored in the whole address (Unicode case, as Postgres's
//!   `lower()` compares accounts' addresses). RFC 5321 lets a server treat
//!   local parts as case-sensitive; no provider people use does.
//! - A `+tag` in the local part is cut off, at any domain. Gmail, Outlook,
//!   iCloud, Fastmail and Proton deliver `name+tag` to `name`; where a
//!   server has a real mailbox with a `+` in its name, it shares a limit
//!   with its neighbour, which errs towards fewer emails, not more.
//! - Dots in the local part are dropped only at gmail.com and
//!   googlemail.com (one domain to Gmail): elsewhere `a.b` and `ab` are
//!   different mailboxes, and merging them would let one user's requests
//!   use up a stranger's allowance.

/// Domains whose local parts ignore dots, and the one they stand for.
const DOTLESS: [(&str, &str); 2] = [("gmail.com", "gmail.com"), ("googlemail.com", "gmail.com")];

/// The key of the mailbox `email` (an address already checked to be one)
/// delivers to.
pub fn key(email: &str) -> String {
    fold(&email.to_lowercase())
}

/// Whether `email` is a spelling the mailbox folds (a `+tag`, Gmail's
/// dots): another spelling of some mailbox, which a sign-up could use to
/// reach a mailbox whose plain address already has an account.
pub fn is_folded(email: &str) -> bool {
    let lower = email.to_lowercase();
    fold(&lower) != lower
}

/// The mailbox key of an address already in lower case (Unicode case, as
/// Postgres's `lower()` compares accounts' addresses, for accounts made
/// before addresses had to be ASCII).
fn fold(email: &str) -> String {
    let Some((local, domain)) = email.rsplit_once('@') else {
        return email.to_owned();
    };
    // A tag is what follows the first `+`; an address that is all tag
    // keeps its local part.
    let local = match local.split_once('+') {
        Some((name, _)) if !name.is_empty() => name,
        _ => local,
    };
    match DOTLESS.iter().find(|(d, _)| *d == domain) {
        Some((_, canonical)) => {
            let name: String = local.chars().filter(|c| *c != '.').collect();
            format!("{name}@{canonical}")
        }
        None => format!("{local}@{domain}"),
    }
}

#[cfg(test)]
mod tests {
    use super::{is_folded, key};

    #[test]
    fn spellings_of_one_mailbox_share_a_key() {
        for spelling in [
            "victim.name@gmail.com",
            "Victim.Name@Gmail.com",
            "victimname+bank@gmail.com",
            "v.i.c.t.i.m.name+a+b@googlemail.com",
        ] {
            assert_eq!(key(spelling), "victimname@gmail.com", "{spelling}");
        }
        assert_eq!(key("Ann+news@Example.org"), "ann@example.org");
        assert!(is_folded("victimname+bank@gmail.com"));
        assert!(is_folded("Victim.Name@gmail.com"));
        assert!(!is_folded("Ann@Example.org"));
    }

    #[test]
    fn different_mailboxes_keep_different_keys() {
        // Dots count outside Gmail.
        assert_ne!(key("a.b@example.org"), key("ab@example.org"));
        assert_ne!(key("ann@example.org"), key("ann@example.com"));
        // A tag and nothing before it: the local part stays.
        assert_eq!(key("+x@example.org"), "+x@example.org");
        // The last @ splits (a quoted local part may hold one).
        assert_eq!(key("\"a@b\"@example.org"), "\"a@b\"@example.org");
    }
}
