//! Logging and tracing. Logs: pretty lines in a terminal, one JSON object
//! per line with `LOG_FORMAT=json`; spans carry the request id and task id,
//! so every line a request or task causes can be found by it. Traces: with
//! an OTLP endpoint set ([`crate::config::TracingConfig`]), the same spans
//! are exported through OpenTelemetry ([`otel`]), the trace context travels
//! with each task through the outbox ([`context`]), and every log line
//! inside a traced span carries its `trace_id` and `span_id`.

pub mod context;
mod export;
mod otel;

use std::{
    fmt,
    sync::atomic::{AtomicBool, Ordering},
};

use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{Event, Subscriber};
use tracing_subscriber::{
    EnvFilter, Layer,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer, writer::BoxMakeWriter},
    layer::SubscriberExt,
    registry::LookupSpan,
    util::SubscriberInitExt,
};

use crate::config::{LogConfig, LogFormat, TracingConfig};

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
        // code location, thread or busy/idle time is recorded per span. Each
        // of those costs on every span, and a request has three.
        Some((provider, tracer)) => (
            Some(provider),
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_location(false)
                    .with_threads(false)
                    .with_tracked_inactivity(false)
                    .with_filter(tracing_subscriber::filter::filter_fn(|meta| meta.is_span())),
            ),
        ),
        None => (None, None),
    };
    let lines = match cfg.format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .compact()
            .with_writer(writer)
            .map_event_format(|f| WithTraceIds {
                inner: f,
                traced,
                json: false,
            })
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .map_event_format(|f| WithTraceIds {
                inner: f,
                traced,
                json: true,
            })
            .boxed(),
    };
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

/// A log line format that puts the current span's trace and span ids in
/// front of each line inside a traced span: first in the JSON object, or
/// as `trace_id=... span_id=...` before a pretty line.
struct WithTraceIds<F> {
    inner: F,
    traced: bool,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let ids = self
            .traced
            // The event's span: its explicit parent, or the current one.
            .then(|| ctx.parent_span())
            .flatten()
            .and_then(|span| {
                tracing::dispatcher::get_default(|d| {
                    tracing_opentelemetry::get_otel_context(&span.id(), d)
                })
            })
            .map(|cx| cx.span().span_context().clone())
            .filter(|sc| sc.is_valid());
        let Some(ids) = ids else {
            return self.inner.format_event(ctx, writer, event);
        };
        let (trace_id, span_id) = (ids.trace_id(), ids.span_id());
        if !self.json {
            // Straight to the writer, which keeps a terminal's colours.
            write!(writer, "trace_id={trace_id} span_id={span_id} ")?;
            return self.inner.format_event(ctx, writer, event);
        }
        // The JSON formatter writes one object: the ids go first in it.
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
            ),
            None => writer.write_str(&line),
        }
    }
}
