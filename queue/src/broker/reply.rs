//! Reading a script's reply by shape. A reply that does not fit is an error
//! naming the script, never a default: a worker handed task id 0 because a
//! script changed would be worse than a worker that stops and says why.

use fred::types::Value;

use crate::QueueError;

/// The elements of one script's array reply, taken in order.
pub(super) struct Reply {
    script: &'static str,
    items: std::vec::IntoIter<Value>,
}

impl Reply {
    pub fn new(script: &'static str, value: Value) -> Result<Self, QueueError> {
        match value {
            Value::Array(items) => Ok(Self {
                script,
                items: items.into_iter(),
            }),
            other => Err(bad(script, format!("{other:?} where a list was expected"))),
        }
    }

    /// Elements not read yet.
    pub fn remaining(&self) -> usize {
        self.items.len()
    }

    fn next(&mut self, what: &str) -> Result<Value, QueueError> {
        self.items
            .next()
            .ok_or_else(|| bad(self.script, format!("no {what}")))
    }

    /// An integer, sent by Lua as a number or as its decimal text.
    pub fn int(&mut self, what: &str) -> Result<i64, QueueError> {
        let v = self.next(what)?;
        v.as_i64()
            .ok_or_else(|| bad(self.script, format!("{what} {v:?} is not an integer")))
    }

    /// A non-negative integer.
    pub fn count(&mut self, what: &str) -> Result<u64, QueueError> {
        let n = self.int(what)?;
        u64::try_from(n).map_err(|_| bad(self.script, format!("{what} {n} is negative")))
    }

    /// An integer, or nil (Lua's `false`).
    pub fn opt_count(&mut self, what: &str) -> Result<Option<u64>, QueueError> {
        match self.next(what)? {
            Value::Null => Ok(None),
            v => {
                let n = v.as_i64().ok_or_else(|| {
                    bad(
                        self.script,
                        format!("{what} {v:?} is neither nil nor an integer"),
                    )
                })?;
                u64::try_from(n)
                    .map(Some)
                    .map_err(|_| bad(self.script, format!("{what} {n} is negative")))
            }
        }
    }

    /// A string.
    pub fn text(&mut self, what: &str) -> Result<String, QueueError> {
        match self.next(what)? {
            Value::Null => Err(bad(self.script, format!("{what} is nil"))),
            v => self.string(what, v),
        }
    }

    fn string(&self, what: &str, v: Value) -> Result<String, QueueError> {
        match v {
            Value::String(s) => Ok(s.to_string()),
            Value::Bytes(b) => String::from_utf8(b.to_vec())
                .map_err(|_| bad(self.script, format!("{what} is not UTF-8"))),
            v => Err(bad(self.script, format!("{what} {v:?} is not a string"))),
        }
    }

    /// A string, or `None` for nil (a field the hash does not have) or the
    /// empty string.
    pub fn opt_text(&mut self, what: &str) -> Result<Option<String>, QueueError> {
        match self.next(what)? {
            Value::Null => Ok(None),
            v => Ok(Some(self.string(what, v)?).filter(|s| !s.is_empty())),
        }
    }

    /// A list of strings.
    pub fn texts(&mut self, what: &str) -> Result<Vec<String>, QueueError> {
        match self.next(what)? {
            Value::Array(items) => items.into_iter().map(|v| self.string(what, v)).collect(),
            v => Err(bad(self.script, format!("{what} {v:?} is not a list"))),
        }
    }

    /// Fails unless every element was read.
    pub fn end(self) -> Result<(), QueueError> {
        match self.items.len() {
            0 => Ok(()),
            n => Err(bad(
                self.script,
                format!("{n} unexpected trailing elements"),
            )),
        }
    }

    /// An error about this reply.
    pub fn unexpected(&self, detail: String) -> QueueError {
        bad(self.script, detail)
    }
}

fn bad(script: &'static str, detail: String) -> QueueError {
    QueueError::Reply { script, detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(items: Vec<Value>) -> Reply {
        Reply::new("test", Value::Array(items)).unwrap()
    }

    #[test]
    fn integers_come_as_numbers_or_text() {
        let mut r = reply(vec![Value::Integer(7), "12".into(), Value::Null]);
        assert_eq!(r.int("a").unwrap(), 7);
        assert_eq!(r.count("b").unwrap(), 12);
        assert_eq!(r.opt_count("c").unwrap(), None);
        r.end().unwrap();
    }

    #[test]
    fn a_wrong_shape_is_an_error_naming_the_script() {
        let mut r = reply(vec!["x".into(), Value::Integer(-1)]);
        let e = r.int("id").unwrap_err().to_string();
        assert!(e.contains("test") && e.contains("id"), "{e}");
        assert!(r.count("n").is_err());
        assert!(r.text("missing").is_err());
        assert!(Reply::new("test", Value::Integer(1)).is_err());
        let mut r = reply(vec![Value::Null]);
        assert!(r.int("nil").is_err());
        assert!(reply(vec![Value::Integer(1)]).end().is_err());
    }
}
