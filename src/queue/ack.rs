//! Acknowledging completed runs, in batches.
//!
//! Redis spends most of a lone acknowledgement on starting the script at all,
//! so one call per task caps a worker at about half of what Redis can do.
//! Here every run that finishes while the previous call is in flight joins the
//! next one (one script call per queue): no waiting is added when idle, and
//! under load the calls carry many tasks each.

use std::{collections::HashMap, time::Duration};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{QueueClient, QueueError, scripts};

/// Most tasks acknowledged by one script call.
const MAX_BATCH: usize = 256;

struct Ack {
    queue: String,
    id: i64,
    delivery: String,
    /// Whether the lease was still ours (false: another worker has the task).
    reply: oneshot::Sender<Result<bool, QueueError>>,
}

/// Hands acknowledgements to the batching loop; cheap to clone.
#[derive(Clone)]
pub(crate) struct Acker {
    tx: mpsc::UnboundedSender<Ack>,
}

impl Acker {
    /// Starts the batching loop on `client`; it runs until `stop`.
    pub fn start(
        client: QueueClient,
        retention: Duration,
        stop: CancellationToken,
    ) -> (Self, impl Future<Output = ()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, run(client, retention, rx, stop))
    }

    /// Marks a run completed; returns false when the lease was lost.
    pub async fn complete(&self, queue: &str, id: i64, delivery: &str) -> Result<bool, QueueError> {
        let (reply, answer) = oneshot::channel();
        let ack = Ack {
            queue: queue.to_owned(),
            id,
            delivery: delivery.to_owned(),
            reply,
        };
        let stopped = || {
            QueueError(fred::error::Error::new(
                fred::error::ErrorKind::Canceled,
                "the acknowledgement loop has stopped",
            ))
        };
        self.tx.send(ack).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(
    client: QueueClient,
    retention: Duration,
    mut rx: mpsc::UnboundedReceiver<Ack>,
    stop: CancellationToken,
) {
    let retention_ms = retention.as_millis().to_string();
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
        for (queue, acks) in by_queue {
            let keys = client.keys(&queue);
            let mut args = Vec::with_capacity(1 + 2 * acks.len());
            args.push(retention_ms.clone());
            for ack in &acks {
                args.push(ack.id.to_string());
                args.push(ack.delivery.clone());
            }
            let flags: Result<Vec<i64>, _> = scripts::run(
                client.pool(),
                &client.scripts().complete,
                vec![keys.task_prefix, keys.active],
                args,
            )
            .await;
            match flags {
                Ok(flags) => {
                    for (ack, flag) in acks.into_iter().zip(flags) {
                        let _ = ack.reply.send(Ok(flag == 1));
                    }
                }
                Err(e) => {
                    for ack in acks {
                        let _ = ack.reply.send(Err(QueueError(e.clone())));
                    }
                }
            }
        }
    }
}
