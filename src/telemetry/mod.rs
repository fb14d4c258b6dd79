//! Logging and tracing. Logs: pretty lines in a terminal, one JSON object
//! per line with `LOG_FORMAT=json`; spans carry the request id and task id,
//! so every line a request or task causes can be found by it. Traces: with
//! an OTLP endpoint set ([`crate::config::TracingConfig`]), the same spans
//! are exported through OpenTelemetry ([`otel`]), the trace context travels
//! with each task through the outbox ([`context`]), and every log line
//! inside a traced span carries its `trace_id` and `span_id`.

pub mod context;
mod export;
mod lines;
mod otel;

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::{
    EnvFilter, fmt::writer::BoxMakeWriter, layer::SubscriberExt, util::SubscriberInitExt,
};

use crate::config::{LogConfig, TracingConfig};

/// What a service logs when RUST_LOG does not say.
const SERVICE_FILTER: &str = "info";
/// What a one-shot tool logs when RUST_LOG does not say: warnings, the
/// audit line of each change, and the migration's outcome.
const TOOL_FILTER: &str = "warn,audit=info,simplebank::db=info";

/// `messaging.system` of the spans that create, send and process tasks:
/// the queues are Redis lists (the outbox is the way in).
pub const MESSAGING_SYSTEM: &str = "redis";

/// Whether spans are exported (see [`context::enabled`]).
static TRACING_ON: AtomicBool = AtomicBool::new(false);

/// The span of one run of `task`: OpenTelemetry's "process" span of a
/// message, with the task's fields for the log lines; joined to the trace of
/// the span that wrote the task ([`context::join_task`]).
pub fn run_span(task: &crate::queue::Task) -> tracing::Span {
    if !context::enabled() {
        return crate::queue::task_span(task);
    }
    let span = tracing::info_span!(
        target: crate::queue::SPAN_TARGET,
        "task",
        otel.name = format!("process {}", task.queue),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        messaging.system = MESSAGING_SYSTEM,
        messaging.operation.type = "process",
        messaging.destination.name = %task.queue,
        messaging.message.id = %task.id,
        simplebank.task.attempt = task.attempt,
        simplebank.task.end = tracing::field::Empty,
        task_id = task.id.get(),
        r#type = %task.kind,
        queue = %task.queue,
        attempt = task.attempt,
        request_id = task.request_id.as_deref(),
    );
    context::join_task(&span, task.trace_context.as_deref(), task.first_hand_out);
    span
}

/// `make()`'s span with tracing on; off, none (no span to build, enter or
/// log).
pub fn span_if_traced(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    match context::enabled() {
        true => make(),
        false => tracing::Span::none(),
    }
}

/// A database client span around one transaction (OpenTelemetry's database
/// conventions): `what` names it, `summary` says what it writes.
pub fn transaction_span(what: &'static str, summary: &'static str) -> tracing::Span {
    span_if_traced(|| {
        tracing::info_span!(
            "transaction",
            // OpenTelemetry names a database span by its query summary.
            otel.name = summary,
            simplebank.transaction = what,
            otel.kind = "client",
            db.system.name = "postgresql",
            db.query.summary = summary,
        )
    })
}

/// Marks the current span (a run's) with how the run ended.
pub fn run_ended(end: crate::queue::RunEnd) {
    if !context::enabled() {
        return;
    }
    let span = tracing::Span::current();
    let end = match end {
        crate::queue::RunEnd::Processed => "processed",
        crate::queue::RunEnd::Retried => "retried",
        crate::queue::RunEnd::Archived => "archived",
    };
    span.record("simplebank.task.end", end);
    if end != "processed" {
        span.record("otel.status_code", "error");
    }
}

/// Keeps the trace pipeline; [`Telemetry::shutdown`] sends what is queued.
#[must_use = "dropping it without shutdown may lose the last spans"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still queued (within a few seconds) and stops the
    /// export.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            let _ = provider.shutdown_with_timeout(std::time::Duration::from_secs(5));
        }
    }
}

/// Sets up logging, and tracing when `tracing` names an endpoint. A service
/// logs to stdout, where its collector reads; a one-shot `tool` (`queues
/// --json`, `relay --once`) logs to stderr, so that its stdout is only its
/// output, and by default less.
pub fn init(cfg: &LogConfig, tracing: &TracingConfig, tool: bool) -> anyhow::Result<Telemetry> {
    let to_stderr = tool;
    let default = if tool { TOOL_FILTER } else { SERVICE_FILTER };
    let filter = EnvFilter::try_new(cfg.filter.as_deref().unwrap_or(default))
        .map_err(|e| anyhow::anyhow!("RUST_LOG is not a valid filter: {e}"))?;
    let writer = BoxMakeWriter::new(move || -> Box<dyn std::io::Write> {
        match to_stderr {
            true => Box::new(std::io::stderr()),
            false => Box::new(std::io::stdout()),
        }
    });
    let pipeline = otel::start(tracing)?;
    let traced = pipeline.is_some();
    TRACING_ON.store(traced, Ordering::Relaxed);
    let (provider, otel_layer) = match pipeline {
        // Spans only, with their own fields: log events are not copied into
        // them as span events (the log lines carry the ids instead), and no
        // code location, thread, target or busy/idle time is recorded per
        // span. Each of those costs on every span, and a request has three.
        // Nor is a span's context made OpenTelemetry's current one each time
        // the span is entered (every poll of an instrumented future): what
        // reads a span's context here (`context`, the log lines' ids) asks
        // the span for it.
        Some((provider, tracer)) => (
            Some(provider),
            Some(otel::SpansOnly(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_location(false)
                    .with_threads(false)
                    .with_target(false)
                    .with_tracked_inactivity(false)
                    .with_context_activation(false),
            )),
        ),
        None => (None, None),
    };
    let lines = lines::layer(cfg.format, writer, traced);
    // RUST_LOG filters for both: a span it turns off is not traced either
    // (one global filter; a second per-layer filter beside the tracing
    // layer's made spans go missing at random).
    tracing_subscriber::registry()
        .with(filter)
        .with(otel_layer)
        .with(lines)
        .try_init()?;
    Ok(Telemetry { provider })
}
