//! An error and its causes on one log line.

use std::error::Error;

/// `e` and its causes on one line, `outer: inner: innermost`, each text
/// once. Many errors print their source as part of their own message (sqlx's
/// and lettre's do), so a cause whose text the error just before it already
/// contains is left out rather than repeated.
///
/// ```
/// let e = anyhow::anyhow!("554 5.7.1 refused").context("smtp: 554 5.7.1 refused");
/// assert_eq!(simplebank_queue::one_line(e.as_ref()), "smtp: 554 5.7.1 refused");
/// ```
pub fn one_line(e: &(dyn Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut previous = line.clone();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !previous.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        previous = text;
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("permanent error (554): {0}")]
    struct Refused(#[source] Reply);

    #[derive(Debug, thiserror::Error)]
    #[error("5.7.1 Sending paused")]
    struct Reply;

    #[test]
    fn each_cause_is_printed_once() {
        let e = anyhow::Error::new(Refused(Reply)).context("sending the email");
        assert_eq!(
            one_line(e.as_ref()),
            "sending the email: permanent error (554): 5.7.1 Sending paused"
        );
        let e = anyhow::Error::new(Reply).context("smtp");
        assert_eq!(one_line(e.as_ref()), "smtp: 5.7.1 Sending paused");
    }

    #[test]
    fn a_cause_is_compared_with_the_error_just_before_it_only() {
        // "timed out" appears in the outer message, but the cause before it
        // does not say it: it is printed.
        let e = anyhow::anyhow!("timed out")
            .context("connecting")
            .context("run timed out: giving up");
        assert_eq!(
            one_line(e.as_ref()),
            "run timed out: giving up: connecting: timed out"
        );
    }
}
