//! Acknowledging completed runs, in batches.
//!
//! Redis spends most of a lone acknowledgement on starting the script at all,
//! so one call per task caps a worker at about half of what Redis can do.
//! Here every run that finishes while the previous call is in flight joins the
//! next one (one script call per queue): no waiting is added when idle, and
//! under load the calls carry many tasks each.

use crate::TaskId;
use std::{collections::HashMap, time::Duration};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{AckOutcome, Broker, Delivery, QueueError};

/// Most tasks acknowledged by one script call.
const MAX_BATCH: usize = 256;

struct Ack {
    queue: String,
    id: TaskId,
    delivery: Delivery,
    reply: oneshot::Sender<Result<AckOutcome, QueueError>>,
}

/// Hands acknowledgements to the batching loop; cheap to clone.
#[derive(Clone)]
pub(crate) struct Acker {
    tx: mpsc::UnboundedSender<Ack>,
}

impl Acker {
    /// Starts the batching loop on `broker`; it runs until `stop`.
    pub fn start(
        broker: Broker,
        retention: Duration,
        stop: CancellationToken,
    ) -> (Self, impl Future<Output = ()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, run(broker, retention, rx, stop))
    }

    /// Marks a run completed.
    pub async fn complete(
        &self,
        queue: &str,
        id: TaskId,
        delivery: Delivery,
    ) -> Result<AckOutcome, QueueError> {
        let (reply, answer) = oneshot::channel();
        let ack = Ack {
            queue: queue.to_owned(),
            id,
            delivery,
            reply,
        };
        let stopped = || {
            QueueError::Redis(fred::error::Error::new(
                fred::error::ErrorKind::Canceled,
                "the acknowledgement loop has stopped",
            ))
        };
        self.tx.send(ack).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(
    broker: Broker,
    retention: Duration,
    mut rx: mpsc::UnboundedReceiver<Ack>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            n = rx.recv_many(&mut batch, MAX_BATCH) => if n == 0 { return },
        }
        let mut by_queue: HashMap<String, Vec<Ack>> = HashMap::new();
        for ack in batch.drain(..) {
            by_queue.entry(ack.queue.clone()).or_default().push(ack);
        }
        // One call per queue, side by side: a slow or failing queue does
        // not hold up the others' acknowledgements.
        let calls = by_queue.into_iter().map(|(queue, acks)| {
            let broker = &broker;
            async move {
                let runs: Vec<_> = acks.iter().map(|a| (a.id, a.delivery)).collect();
                match broker.complete(&queue, retention, &runs).await {
                    Ok(outcomes) => {
                        for (ack, outcome) in acks.into_iter().zip(outcomes) {
                            let _ = ack.reply.send(Ok(outcome));
                        }
                    }
                    Err(e) => {
                        for ack in acks {
                            let _ = ack.reply.send(Err(e.clone()));
                        }
                    }
                }
            }
        });
        futures::future::join_all(calls).await;
    }
}
