//! How a log line looks. Inside a traced span, a line starts with the
//! span's `trace_id` and `span_id` (first in the JSON object, or
//! `trace_id=... span_id=...` before a pretty line).
//!
//! A JSON line's `span` is the innermost span with plain fields
//! (`request_id`, `task_id`, `queue`, ...), not its OpenTelemetry attributes
//! (`otel.name`, `http.route`, `messaging.message.id`, ...), which are for
//! the trace; those have a dot in their name, the plain ones do not. So a
//! line logged inside a span that only tracing has (a transaction, an SMTP
//! send) still names its request or task, as it does with tracing off, and
//! its `span` is no larger than an untraced line's. (A plain field named
//! `name` would be shadowed there by the span's name: none is.)
//!
//! The fmt layer formats a span's fields when the span starts and again on
//! each `record`, whether or not a line is ever logged inside it; leaving
//! the attributes out ([`PlainSpanFields`]) keeps that cheap too.

use std::fmt;

use opentelemetry::trace::TraceContextExt;
use serde_json::{Map, Value};
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{
    Layer,
    field::RecordFields,
    fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter, format::Writer},
    registry::LookupSpan,
};

use crate::config::LogFormat;

/// The log lines of `format`, written to `writer`: pretty ones for a
/// terminal, or one JSON object per line.
pub fn layer<S>(
    format: LogFormat,
    writer: impl for<'w> MakeWriter<'w> + Send + Sync + 'static,
    traced: bool,
) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    match format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .compact()
            .with_writer(writer)
            .map_event_format(|inner| Lines {
                inner,
                traced,
                json: false,
            })
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .json()
            .flatten_event(true)
            // `Lines` writes the span.
            .with_current_span(false)
            .with_span_list(false)
            .fmt_fields(PlainSpanFields)
            .map_event_format(|inner| Lines {
                inner,
                traced,
                json: true,
            })
            .boxed(),
    }
}

/// The event format: `inner`'s line, with the trace ids when `traced`, and
/// in `json` the span as the module doc says.
struct Lines<F> {
    inner: F,
    traced: bool,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for Lines<F>
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
        // The event's span: its explicit parent, or the current one.
        let leaf = ctx.parent_span();
        let ids = leaf
            .as_ref()
            .filter(|_| self.traced)
            .and_then(|span| {
                tracing::dispatcher::get_default(|d| {
                    tracing_opentelemetry::get_otel_context(&span.id(), d)
                })
            })
            .map(|cx| cx.span().span_context().clone())
            .filter(|sc| sc.is_valid())
            .map(|sc| (sc.trace_id(), sc.span_id()));
        if !self.json {
            if let Some((trace_id, span_id)) = ids {
                // Straight to the writer, which keeps a terminal's colours.
                write!(writer, "trace_id={trace_id} span_id={span_id} ")?;
            }
            return self.inner.format_event(ctx, writer, event);
        }
        // The JSON formatter writes one object; the ids go first in it and
        // the span last.
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let Some(members) = line
            .trim_end()
            .strip_prefix('{')
            .and_then(|l| l.strip_suffix('}'))
        else {
            return writer.write_str(&line);
        };
        let span = leaf.and_then(|leaf| {
            leaf.scope().find_map(|span| {
                let extensions = span.extensions();
                let fields = extensions.get::<FormattedFields<N>>()?;
                let fields = fields.fields.strip_prefix('{')?.strip_suffix('}')?;
                (!fields.is_empty()).then(|| (span.name(), fields.to_owned()))
            })
        });
        // The members in order, comma-separated.
        let mut parts = Vec::with_capacity(3);
        if let Some((trace_id, span_id)) = ids {
            parts.push(format!(
                "\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\""
            ));
        }
        if !members.is_empty() {
            parts.push(members.to_owned());
        }
        if let Some((name, fields)) = span {
            let name = serde_json::to_string(name).map_err(|_| fmt::Error)?;
            parts.push(format!("\"span\":{{\"name\":{name},{fields}}}"));
        }
        write!(writer, "{{{}", parts.join(","))?;
        writer.write_str("}\n")
    }
}

/// The span field formatter of the JSON log format: a JSON object of the
/// span's plain fields, `{}` when it has none.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainSpanFields;

impl<'w> FormatFields<'w> for PlainSpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut plain = Plain::default();
        fields.record(&mut plain);
        let text = serde_json::to_string(&plain.0).map_err(|_| fmt::Error)?;
        writer.write_str(&text)
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut plain = Plain::default();
        fields.record(&mut plain);
        // Recording only attributes (a status, a message id) is the common
        // case: nothing to merge, nothing to parse.
        if plain.0.is_empty() {
            return Ok(());
        }
        let mut all: Map<String, Value> = serde_json::from_str(&current.fields).unwrap_or_default();
        all.extend(plain.0);
        current.fields = serde_json::to_string(&all).map_err(|_| fmt::Error)?;
        Ok(())
    }
}

/// Collects the fields without a dot in their name.
#[derive(Default)]
struct Plain(Map<String, Value>);

impl Plain {
    fn keep(&mut self, field: &Field, value: impl Into<Value>) {
        if !field.name().contains('.') {
            self.0.insert(field.name().to_owned(), value.into());
        }
    }
}

impl Visit for Plain {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.keep(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.keep(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.keep(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.keep(field, value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.keep(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !field.name().contains('.') {
            self.keep(field, format!("{value:?}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_json_line_shows_the_innermost_span_with_plain_fields() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry().with(super::layer(
            super::LogFormat::Json,
            move || writer.clone(),
            false,
        ));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside");
            let request = tracing::info_span!(
                "request",
                otel.name = "POST /v1/create_user",
                http.response.status_code = tracing::field::Empty,
                request_id = %"r-1",
            );
            let _request = request.enter();
            // A span with attributes only: lines inside it show the request.
            let transaction = tracing::info_span!("transaction", otel.kind = "client");
            transaction.in_scope(|| tracing::info!("inside"));
            request.record("http.response.status_code", 200);
            let task = tracing::info_span!(
                "task",
                messaging.message.id = tracing::field::Empty,
                task_id = 7_u64,
                outcome = tracing::field::Empty,
            );
            let _task = task.enter();
            task.record("messaging.message.id", 7);
            tracing::info!("first");
            task.record("outcome", "processed");
            tracing::info!(parent: &request, "second");
            tracing::info!("third");
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let spans: Vec<serde_json::Value> = text
            .lines()
            .map(|l| {
                let line: serde_json::Value = serde_json::from_str(l).expect(l);
                assert!(line["message"].is_string(), "{l}");
                line["span"].clone()
            })
            .collect();
        let request = serde_json::json!({"name": "request", "request_id": "r-1"});
        assert_eq!(
            spans,
            [
                serde_json::Value::Null,
                request.clone(),
                serde_json::json!({"name": "task", "task_id": 7}),
                request,
                serde_json::json!({"name": "task", "task_id": 7, "outcome": "processed"}),
            ]
        );
    }
}
