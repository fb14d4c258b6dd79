//! Which of a queue's outbox rows the relay has forwarded, told by
//! transaction ids rather than by a flag on each row.
//!
//! Every row carries the id of the transaction that wrote it (`txid`).
//! Transactions commit in any order, so "every id below N" cannot say what
//! was forwarded; a Postgres snapshot can. A snapshot `xmin:xmax:xip` sees
//! exactly the committed transactions below `xmax` that are not in `xip`
//! (those were still running when it was taken). A [`Position`] has the same
//! shape: the rows of every transaction below `xmax` and not in `open` are
//! forwarded. The next batch is then the rows the current snapshot sees whose
//! transaction is in `open` or at least `xmax`, in transaction order; the
//! transactions still running stay in the next position's `open`, and an
//! aborted one is never seen at all.
//!
//! A batch cut at the batch size can end inside one transaction's rows (a
//! bulk insert): `partial` then says how far into that transaction the
//! position is. It is a list because a cut can come before an earlier cut's
//! transaction is done: an open transaction older than it commits, and its
//! rows come first.

use std::{fmt, str::FromStr};

/// A Postgres snapshot (`pg_current_snapshot()::text`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub xmin: u64,
    pub xmax: u64,
    pub xip: Vec<u64>,
}

#[derive(Debug, thiserror::Error)]
#[error("not a {what}: {text:?}")]
pub struct ParseError {
    what: &'static str,
    text: String,
}

fn parse_error(what: &'static str, text: &str) -> ParseError {
    ParseError {
        what,
        text: text.to_owned(),
    }
}

fn ids(list: &str, what: &'static str, text: &str) -> Result<Vec<u64>, ParseError> {
    if list.is_empty() {
        return Ok(Vec::new());
    }
    list.split(',')
        .map(|id| id.parse().map_err(|_| parse_error(what, text)))
        .collect()
}

impl FromStr for Snapshot {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let what = "snapshot";
        let mut parts = s.split(':');
        let (Some(xmin), Some(xmax), Some(xip), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(parse_error(what, s));
        };
        let number = |p: &str| p.parse::<u64>().map_err(|_| parse_error(what, s));
        Ok(Self {
            xmin: number(xmin)?,
            xmax: number(xmax)?,
            xip: ids(xip, what, s)?,
        })
    }
}

/// How far the relay has forwarded one queue; see the module doc.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Position {
    /// Rows of transactions from here on are not forwarded.
    pub xmax: u64,
    /// Transactions below `xmax` whose rows are not forwarded (they were
    /// running, or had aborted, when the position was taken), ascending.
    pub open: Vec<u64>,
    /// Transactions below `xmax` (not in `open`) whose rows are forwarded
    /// only up to an id, ascending by transaction.
    pub partial: Vec<(u64, i64)>,
}

/// One row of a batch, as far as positions are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RowId {
    pub txid: u64,
    pub id: i64,
}

impl Position {
    /// Nothing forwarded yet: a queue the relay has never seen.
    pub const START: Position = Position {
        xmax: 0,
        open: Vec::new(),
        partial: Vec::new(),
    };

    /// Every transaction below this one is forwarded: what retention may
    /// drop, as far as this queue is concerned.
    pub fn horizon(&self) -> u64 {
        let first_open = self.open.first().copied().unwrap_or(u64::MAX);
        let partial = self.partial.first().map_or(u64::MAX, |(txid, _)| *txid);
        self.xmax.min(first_open).min(partial)
    }

    /// Whether the row `row` is forwarded by this position.
    pub fn covers(&self, row: RowId) -> bool {
        match self.partial.iter().find(|(txid, _)| *txid == row.txid) {
            Some((_, id)) => row.id <= *id,
            None => row.txid < self.xmax && self.open.binary_search(&row.txid).is_err(),
        }
    }

    /// The position after forwarding `batch`: the rows, in (txid, id) order,
    /// that `snapshot` showed beyond `self`. `full` says the batch was cut
    /// at its size (more rows may follow its last one); otherwise it held
    /// every row the snapshot showed beyond `self`.
    pub fn after(&self, snapshot: &Snapshot, batch: &[RowId], full: bool) -> Position {
        let last = match (full, batch.last()) {
            (true, Some(last)) => *last,
            // Everything the snapshot showed is forwarded: the snapshot
            // itself is the position. Transactions of `open` it shows
            // committed were in the batch; those it shows running are in
            // its `xip`; aborted ones need no more looking at.
            _ => {
                if snapshot.xmax < self.xmax {
                    // A snapshot older than the position (another server's?):
                    // it cannot say more than the position already does.
                    return self.clone();
                }
                return Position {
                    xmax: snapshot.xmax,
                    open: snapshot.xip.clone(),
                    partial: Vec::new(),
                };
            }
        };
        // Cut at `last`: every transaction before it that the snapshot
        // shows committed is forwarded (the batch is in txid order); those
        // after it in `open` or `partial` are where they were, and `last`'s
        // own rest waits too.
        let xmax = self.xmax.max(last.txid + 1);
        let mut open: Vec<u64> = self
            .open
            .iter()
            .copied()
            .filter(|&t| t > last.txid)
            .chain(snapshot.xip.iter().copied().filter(|&t| t < xmax))
            .collect();
        open.sort_unstable();
        open.dedup();
        let mut partial = vec![(last.txid, last.id)];
        partial.extend(self.partial.iter().filter(|(t, _)| *t > last.txid));
        Position {
            xmax,
            open,
            partial,
        }
    }

    /// The partial transactions and the ids they are forwarded up to, as
    /// the two arrays SQL takes.
    pub fn partial_arrays(&self) -> (Vec<String>, Vec<i64>) {
        self.partial
            .iter()
            .map(|(t, id)| (t.to_string(), *id))
            .unzip()
    }
}

/// Stored as `xmax;open,open;txid.id,txid.id` (the last part empty without
/// a partial transaction).
impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{};", self.xmax)?;
        for (i, t) in self.open.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{t}")?;
        }
        f.write_str(";")?;
        for (i, (txid, id)) in self.partial.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{txid}.{id}")?;
        }
        Ok(())
    }
}

impl FromStr for Position {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let what = "position";
        let mut parts = s.split(';');
        let (Some(xmax), Some(open), Some(partial_text), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(parse_error(what, s));
        };
        let mut open = ids(open, what, s)?;
        open.sort_unstable();
        // A transaction listed twice would be read twice: the read takes
        // one index range per listed transaction.
        open.dedup();
        let mut partial = Vec::new();
        for entry in partial_text.split(',').filter(|e| !e.is_empty()) {
            let (txid, id) = entry.split_once('.').ok_or_else(|| parse_error(what, s))?;
            partial.push((
                txid.parse().map_err(|_| parse_error(what, s))?,
                id.parse().map_err(|_| parse_error(what, s))?,
            ));
        }
        partial.sort_unstable();
        Ok(Self {
            xmax: xmax.parse().map_err(|_| parse_error(what, s))?,
            open,
            partial,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    #[test]
    fn positions_and_snapshots_read_back_what_they_print() {
        let p = Position {
            xmax: 120,
            open: vec![100, 117],
            partial: vec![(110, 42), (115, 7)],
        };
        assert_eq!(p.to_string(), "120;100,117;110.42,115.7");
        assert_eq!(p.to_string().parse::<Position>().unwrap(), p);
        assert_eq!(Position::START.to_string(), "0;;");
        assert_eq!("0;;".parse::<Position>().unwrap(), Position::START);
        // A transaction listed twice (a hand-edited cursor) is read once.
        assert_eq!(
            "120;117,100,117;110.42,115.7".parse::<Position>().unwrap(),
            p
        );
        assert_eq!(p.horizon(), 100);
        assert_eq!(
            "95:120:95,117".parse::<Snapshot>().unwrap(),
            Snapshot {
                xmin: 95,
                xmax: 120,
                xip: vec![95, 117]
            }
        );
        for bad in ["", "1;2", "x;;", "1;a;", "1;;5", "1;;5.x", "1;;;"] {
            assert!(bad.parse::<Position>().is_err(), "{bad:?}");
        }
        assert!("1:2".parse::<Snapshot>().is_err());
    }

    /// A model of Postgres: transactions take ids in order, write rows,
    /// and commit or abort in any order; a snapshot sees the committed ones.
    #[derive(Default)]
    struct Model {
        next_xid: u64,
        next_id: i64,
        running: BTreeSet<u64>,
        committed: BTreeSet<u64>,
        rows: BTreeMap<u64, Vec<i64>>,
    }

    impl Model {
        fn begin(&mut self) -> u64 {
            self.next_xid += 1;
            self.running.insert(self.next_xid);
            self.next_xid
        }

        fn write(&mut self, txid: u64, n: usize) {
            for _ in 0..n {
                self.next_id += 1;
                self.rows.entry(txid).or_default().push(self.next_id);
            }
        }

        fn end(&mut self, txid: u64, commit: bool) {
            self.running.remove(&txid);
            if commit {
                self.committed.insert(txid);
            }
        }

        fn snapshot(&self) -> Snapshot {
            let xmax = self.next_xid + 1;
            Snapshot {
                xmin: self.running.first().copied().unwrap_or(xmax),
                xmax,
                xip: self.running.iter().copied().collect(),
            }
        }

        /// What the relay's read returns: the committed rows not covered,
        /// in (txid, id) order, at most `limit`.
        fn read(&self, p: &Position, limit: usize) -> Vec<RowId> {
            self.committed
                .iter()
                .flat_map(|&txid| {
                    self.rows
                        .get(&txid)
                        .into_iter()
                        .flatten()
                        .map(move |&id| RowId { txid, id })
                })
                .filter(|r| !p.covers(*r))
                .take(limit)
                .collect()
        }
    }

    /// A small deterministic generator, so the test needs no crate.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    /// Transactions that commit out of order, stay open across many
    /// batches, abort, or write more rows than a batch holds: every
    /// committed row is forwarded exactly once, and no aborted one.
    #[test]
    fn every_committed_row_is_forwarded_once_whatever_the_commit_order() {
        for seed in 1..=200 {
            let mut rng = Lcg(seed);
            let mut db = Model::default();
            let mut position = Position::START;
            let mut forwarded: Vec<RowId> = Vec::new();
            let limit = 1 + rng.below(7) as usize;
            for _step in 0..300 {
                match rng.below(10) {
                    0..=2 => {
                        let t = db.begin();
                        let rows = if rng.below(8) == 0 { 12 } else { 1 };
                        db.write(t, rows);
                    }
                    3..=5 if !db.running.is_empty() => {
                        let running: Vec<u64> = db.running.iter().copied().collect();
                        // The oldest one lingers: picked rarely.
                        let t = running[rng.below(running.len() as u64) as usize];
                        if t != running[0] || rng.below(10) == 0 {
                            db.end(t, rng.below(6) != 0);
                        }
                    }
                    _ => {
                        let snapshot = db.snapshot();
                        let batch = db.read(&position, limit);
                        let full = batch.len() == limit;
                        // The snapshot shows what the read returned: nothing
                        // the batch holds is in the snapshot's running list.
                        assert!(batch.iter().all(|r| !snapshot.xip.contains(&r.txid)));
                        let next = position.after(&snapshot, &batch, full);
                        assert!(next.horizon() >= position.horizon(), "seed {seed}");
                        for r in &batch {
                            assert!(next.covers(*r), "seed {seed}: {r:?} not covered by {next}");
                        }
                        forwarded.extend(&batch);
                        position = next.to_string().parse().unwrap();
                    }
                }
            }
            // Everything ends; the relay drains.
            for t in db.running.clone() {
                db.end(t, true);
            }
            loop {
                let batch = db.read(&position, limit);
                if batch.is_empty() {
                    break;
                }
                let full = batch.len() == limit;
                position = position.after(&db.snapshot(), &batch, full);
                forwarded.extend(&batch);
            }
            let mut seen = forwarded.clone();
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), forwarded.len(), "seed {seed}: a row twice");
            let committed: Vec<RowId> = db.read(&Position::START, usize::MAX);
            assert_eq!(seen, committed, "seed {seed}: rows missed or extra");
        }
    }
}
