//! Finished spans on their way to the collector, on a thread of their own:
//! a bounded queue that a span joins without waiting (when it is full the
//! span is dropped and counted), batches sent by the OTLP exporter within a
//! timeout (a batch that fails or times out is dropped and counted too).
//! A collector that is slow, away or black-holed therefore costs a request
//! or a task nothing but the push onto the queue.
//!
//! The thread wakes when a batch is due (OTEL_BSP_SCHEDULE_DELAY) or when a
//! full batch's weight waits (OTEL_BSP_MAX_EXPORT_BATCH_SIZE spans of no
//! links, or fewer with links: see [`weight`]), not for each span: a
//! wake-up per span cost the service more than building the span did.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
        mpsc as std_mpsc,
    },
    time::{Duration, Instant},
};

use opentelemetry::Context;
use opentelemetry_sdk::{
    error::{OTelSdkError, OTelSdkResult},
    trace::{Span, SpanData, SpanExporter, SpanProcessor},
};
use tokio::sync::{
    Notify,
    mpsc::{
        self, Receiver, Sender,
        error::{TryRecvError, TrySendError},
    },
};

use crate::metrics;

/// What the export thread is asked to do.
enum Message {
    Span(Box<SpanData>),
    /// Send what is queued, then answer.
    Flush(std_mpsc::SyncSender<()>),
    /// Send what is queued, answer, and end.
    Shutdown(std_mpsc::SyncSender<()>),
}

/// The bounds of the queue and of each export.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_queue: usize,
    pub max_batch: usize,
    pub delay: Duration,
    pub timeout: Duration,
}

/// A [`SpanProcessor`] that never blocks the span's thread; see the module doc.
#[derive(Debug)]
pub struct BoundedExport {
    /// `None` once dropped (see `Drop`).
    queue: Option<Sender<Message>>,
    /// Wakes the thread before its next batch is due.
    wake: Arc<Notify>,
    /// A full batch's weight (OTEL_BSP_MAX_EXPORT_BATCH_SIZE, as
    /// [`weight`]s): queued, it wakes the thread.
    batch_weight: usize,
    /// The weight ([`weight`]) of the spans queued now: bounded too, so a
    /// queue of relay batch spans, a link per row each, stays small while
    /// the collector is away.
    queued: Arc<AtomicUsize>,
    max_weight: usize,
}

impl BoundedExport {
    /// Starts the export thread, with a Tokio runtime of its own (the OTLP
    /// clients need one, and the service's runtime does not exist yet), and
    /// the exporter `make` builds in it.
    pub fn start<E: SpanExporter + 'static>(
        make: impl FnOnce() -> anyhow::Result<E>,
        limits: Limits,
    ) -> anyhow::Result<Self> {
        let (queue, spans) = mpsc::channel(limits.max_queue);
        let queued = Arc::new(AtomicUsize::new(0));
        let taken = queued.clone();
        let wake = Arc::new(Notify::new());
        let woken = wake.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let exporter = {
            let _inside = runtime.enter();
            make()?
        };
        std::thread::Builder::new()
            .name("trace-export".into())
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| {
                    runtime.block_on(export_loop(exporter, spans, taken, &woken, limits))
                });
                // The queue closes with the thread: later spans are counted
                // as dropped ("shut_down"), and this says why.
                if std::panic::catch_unwind(run).is_err() {
                    tracing::error!(
                        "the trace export stopped (a panic): spans are dropped from now on"
                    );
                }
            })?;
        Ok(Self {
            queue: Some(queue),
            wake,
            batch_weight: limits.max_batch,
            queued,
            // A full queue of spans with a few links each.
            max_weight: limits.max_queue.saturating_mul(QUEUED_WEIGHT_PER_SPAN),
        })
    }

    /// Asks the thread for `message`'s work and waits up to `timeout` for
    /// it. Blocking here is the caller's choice (a flush, the shutdown),
    /// never a span's.
    fn ask(
        &self,
        message: impl Fn(std_mpsc::SyncSender<()>) -> Message,
        timeout: Duration,
    ) -> OTelSdkResult {
        let until = Instant::now() + timeout;
        let (done, answered) = std_mpsc::sync_channel(1);
        let queue = self.queue.as_ref().ok_or(OTelSdkError::AlreadyShutdown)?;
        // A full queue makes room within a batch's export.
        loop {
            match queue.try_send(message(done.clone())) {
                Ok(()) => {
                    self.wake.notify_one();
                    break;
                }
                Err(TrySendError::Closed(_)) => return Err(OTelSdkError::AlreadyShutdown),
                Err(TrySendError::Full(_)) if Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(TrySendError::Full(_)) => return Err(OTelSdkError::Timeout(timeout)),
            }
        }
        answered
            .recv_timeout(until.saturating_duration_since(Instant::now()))
            .map_err(|_| OTelSdkError::Timeout(timeout))
    }
}

impl SpanProcessor for BoundedExport {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let Some(queue) = &self.queue else {
            metrics::trace_spans_dropped("shut_down", 1);
            return;
        };
        let w = weight(&span);
        let before = self.queued.fetch_add(w, Ordering::Relaxed);
        let dropped = if before + w > self.max_weight {
            "queue_full"
        } else {
            match queue.try_send(Message::Span(Box::new(span))) {
                Ok(()) => {
                    // Once per full batch, on the span that fills it.
                    if before < self.batch_weight && before + w >= self.batch_weight {
                        self.wake.notify_one();
                    }
                    return;
                }
                Err(TrySendError::Full(_)) => "queue_full",
                Err(TrySendError::Closed(_)) => "shut_down",
            }
        };
        // Spans that came while this one's weight counted may have found the
        // batch full already and woken no one: wake the thread for them.
        if self
            .queued
            .fetch_sub(w, Ordering::Relaxed)
            .saturating_sub(w)
            >= self.batch_weight
        {
            self.wake.notify_one();
        }
        metrics::trace_spans_dropped(dropped, 1);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Message::Flush, Duration::from_secs(30))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.ask(Message::Shutdown, timeout)
    }
}

impl Drop for BoundedExport {
    /// Without a shutdown (a provider dropped): the queue closes, and the
    /// thread sends what it holds and ends.
    fn drop(&mut self) {
        drop(self.queue.take());
        self.wake.notify_one();
    }
}

async fn export_loop<E: SpanExporter>(
    exporter: E,
    mut spans: Receiver<Message>,
    queued: Arc<AtomicUsize>,
    wake: &Notify,
    limits: Limits,
) {
    // A span taken off the queue no longer weighs on it.
    let take = |span: Box<SpanData>| {
        queued.fetch_sub(weight(&span), Ordering::Relaxed);
        *span
    };
    let mut batch: Vec<SpanData> = Vec::with_capacity(limits.max_batch);
    let mut deadline = tokio::time::Instant::now() + limits.delay;
    // Whether the last round left messages queued.
    let mut more = false;
    loop {
        if !more {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = wake.notified() => {}
            }
        }
        // Who waits for this round's export, and whether it is the last.
        let (mut answers, mut end) = (Vec::new(), false);
        // What is queued now, at most a queue's worth: spans that keep
        // coming wait for the next round, which starts at once.
        more = true;
        for _ in 0..limits.max_queue.max(1) {
            match spans.try_recv() {
                Ok(Message::Span(span)) => batch.push(take(span)),
                Ok(Message::Flush(done)) => answers.push(done),
                Ok(Message::Shutdown(done)) => {
                    answers.push(done);
                    end = true;
                }
                Err(TryRecvError::Empty) => {
                    more = false;
                    break;
                }
                // Every sender is gone: the provider was dropped.
                Err(TryRecvError::Disconnected) => {
                    end = true;
                    break;
                }
            }
        }
        let chunks = split(
            std::mem::take(&mut batch),
            limits.max_batch,
            MAX_EXPORT_WEIGHT,
            weight,
        );
        for chunk in chunks {
            send(&exporter, chunk, limits.timeout).await;
        }
        deadline = tokio::time::Instant::now() + limits.delay;
        for done in answers {
            let _ = done.try_send(());
        }
        if end {
            let _ = exporter.shutdown();
            // Spans that ended after the last export are dropped, counted.
            spans.close();
            let mut late = 0;
            while let Ok(message) = spans.try_recv() {
                if let Message::Span(_) = message {
                    late += 1;
                }
            }
            if late > 0 {
                metrics::trace_spans_dropped("shut_down", late);
            }
            return;
        }
    }
}

/// What the queue may weigh, per span it may hold (OTEL_BSP_MAX_QUEUE_SIZE).
const QUEUED_WEIGHT_PER_SPAN: usize = 16;

/// The most an export may weigh ([`weight`]): about 2 MB of protobuf, half
/// of what an OTLP collector takes in one request by default (4 MiB; a
/// larger one is refused whole). A relay batch's span links each of its
/// rows, so 512 of them would weigh far more.
const MAX_EXPORT_WEIGHT: usize = 40_000;

/// A span's weight in an export: one, plus one per link (a link is about
/// as large as a small span's ids and fields).
fn weight(span: &SpanData) -> usize {
    1 + span.links.len()
}

/// `items` in order, in chunks of at most `max_items` and at most
/// `max_weight` (an item heavier than that goes alone).
fn split<T>(
    items: Vec<T>,
    max_items: usize,
    max_weight: usize,
    weight: impl Fn(&T) -> usize,
) -> Vec<Vec<T>> {
    let mut chunks = Vec::new();
    let (mut chunk, mut load) = (Vec::new(), 0);
    for item in items {
        let w = weight(&item);
        if !chunk.is_empty() && (chunk.len() == max_items || load + w > max_weight) {
            chunks.push(std::mem::take(&mut chunk));
            load = 0;
        }
        load += w;
        chunk.push(item);
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

/// One export within `timeout`; its spans are counted as exported or dropped.
async fn send<E: SpanExporter>(exporter: &E, chunk: Vec<SpanData>, timeout: Duration) {
    let n = chunk.len() as u64;
    match tokio::time::timeout(timeout, exporter.export(chunk)).await {
        Ok(Ok(())) => metrics::trace_spans_exported(n),
        Ok(Err(_)) => metrics::trace_spans_dropped("export_failed", n),
        Err(_) => metrics::trace_spans_dropped("export_timed_out", n),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::{Duration, Instant},
    };

    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::{
        error::OTelSdkResult,
        trace::{SdkTracerProvider, SpanData, SpanExporter},
    };

    use super::{BoundedExport, Limits, split};

    /// An exporter that keeps the size of each batch it is given.
    #[derive(Debug, Clone, Default)]
    struct Sizes(Arc<Mutex<Vec<usize>>>);

    impl SpanExporter for Sizes {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().push(batch.len());
            Ok(())
        }
    }

    impl Sizes {
        /// A provider exporting through [`BoundedExport`] to a `Sizes`, in
        /// batches of 4, due every `delay`.
        fn provider(delay: Duration) -> (Self, SdkTracerProvider) {
            let sizes = Self::default();
            let exporter = sizes.clone();
            let limits = Limits {
                max_queue: 64,
                max_batch: 4,
                delay,
                timeout: Duration::from_secs(5),
            };
            let processor = BoundedExport::start(move || Ok(exporter), limits).unwrap();
            let provider = SdkTracerProvider::builder()
                .with_span_processor(processor)
                .build();
            (sizes, provider)
        }

        /// The sizes once there are `n` batches (within 10 s).
        fn when(&self, n: usize) -> Vec<usize> {
            let until = Instant::now() + Duration::from_secs(10);
            while self.0.lock().unwrap().len() < n && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            self.0.lock().unwrap().clone()
        }
    }

    #[test]
    fn a_full_batch_goes_at_once_and_the_rest_when_flushed_or_shut_down() {
        // Never due in this test: only a full batch or a flush sends.
        let (sizes, provider) = Sizes::provider(Duration::from_secs(3600));
        let tracer = provider.tracer("test");
        for _ in 0..4 {
            tracer.start("span").end();
        }
        assert_eq!(sizes.when(1), [4], "a full batch is sent at once");
        for _ in 0..3 {
            tracer.start("span").end();
        }
        // Three wait for their batch to be due; nothing wakes the thread.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(*sizes.0.lock().unwrap(), [4]);
        provider.force_flush().unwrap();
        assert_eq!(*sizes.0.lock().unwrap(), [4, 3], "a flush sends the rest");
        tracer.start("span").end();
        provider.shutdown().unwrap();
        assert_eq!(*sizes.0.lock().unwrap(), [4, 3, 1], "so does the shutdown");
    }

    #[test]
    fn a_partial_batch_goes_when_due() {
        let (sizes, provider) = Sizes::provider(Duration::from_millis(20));
        provider.tracer("test").start("span").end();
        // No flush, no full batch: only the schedule sends it.
        assert_eq!(sizes.when(1), [1]);
        // Dropped without a shutdown: the thread ends, and nothing is left.
        drop(provider);
    }

    #[test]
    fn exports_are_bounded_in_count_and_weight() {
        let w = |n: &usize| *n;
        assert_eq!(
            split(vec![1, 1, 1, 1, 1], 2, 100, w),
            vec![vec![1, 1], vec![1, 1], vec![1]]
        );
        assert_eq!(
            split(vec![30, 30, 30, 5], 10, 60, w),
            vec![vec![30, 30], vec![30, 5]]
        );
        // Heavier than the bound: alone, not lost.
        assert_eq!(
            split(vec![1, 500, 1], 10, 60, w),
            vec![vec![1], vec![500], vec![1]]
        );
        assert!(split(Vec::<usize>::new(), 10, 60, w).is_empty());
    }
}
