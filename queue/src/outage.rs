//! How a loop lives through an outage of what it depends on: one warning when
//! the outage begins (or moves to another side, say from Redis to Postgres),
//! one line when it ends, and
//! capped exponential backoff in between, so a Redis or Postgres outage of an
//! hour is two log lines, not thousands.

use std::{
    fmt::Display,
    ops::ControlFlow,
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

/// The outage state of one loop.
#[derive(Debug)]
pub struct Outage {
    /// Logged when an outage begins, e.g. "relay cannot forward".
    failing: &'static str,
    /// Logged when it ends, e.g. "relay recovered".
    recovered: &'static str,
    /// Since when, and on which side (e.g. "redis"), while failing.
    down: Option<(Instant, &'static str)>,
    first_backoff: Duration,
    max_backoff: Duration,
    backoff: Duration,
}

impl Outage {
    /// `failing` and `recovered` are the two log messages; the backoff
    /// starts at `first_backoff` and doubles up to `max_backoff`.
    pub fn new(
        failing: &'static str,
        recovered: &'static str,
        first_backoff: Duration,
        max_backoff: Duration,
    ) -> Self {
        Self {
            failing,
            recovered,
            down: None,
            first_backoff,
            max_backoff: max_backoff.max(first_backoff),
            backoff: first_backoff,
        }
    }

    /// An attempt succeeded: logs the recovery if there was an outage, and
    /// resets the backoff.
    pub fn up(&mut self) {
        if let Some((since, side)) = self.down.take() {
            tracing::info!(
                side,
                down_for_ms = since.elapsed().as_millis() as u64,
                "{}",
                self.recovered
            );
        }
        self.backoff = self.first_backoff;
    }

    /// An attempt failed on `side`: logs it when the outage begins or moves
    /// to another side, and returns how long to wait before the next attempt.
    pub fn down(&mut self, side: &'static str, error: &(dyn Display + Sync)) -> Duration {
        match &mut self.down {
            Some((_, was)) if *was == side => {}
            Some((_, was)) => {
                *was = side;
                tracing::warn!(side, error = %error, "{}", self.failing);
            }
            None => {
                self.down = Some((Instant::now(), side));
                tracing::warn!(side, error = %error, "{}", self.failing);
            }
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(self.max_backoff);
        wait
    }

    /// [`Outage::down`], then waits out the backoff: `Continue` to try
    /// again, `Break` when `shutdown` came first.
    pub async fn pause(
        &mut self,
        side: &'static str,
        error: &(dyn Display + Sync),
        shutdown: &CancellationToken,
    ) -> ControlFlow<()> {
        let wait = self.down(side, error);
        tokio::select! {
            _ = shutdown.cancelled() => ControlFlow::Break(()),
            _ = tokio::time::sleep(wait) => ControlFlow::Continue(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets_on_recovery() {
        let ms = Duration::from_millis;
        let mut o = Outage::new("down", "up", ms(50), ms(300));
        let waits: Vec<_> = (0..5).map(|_| o.down("redis", &"refused")).collect();
        assert_eq!(waits, [ms(50), ms(100), ms(200), ms(300), ms(300)]);
        o.up();
        assert_eq!(o.down("postgres", &"refused"), ms(50));
    }
}
