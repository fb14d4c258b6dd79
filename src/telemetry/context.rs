//! Trace context across the process boundaries a sign-up's work crosses:
//! the client's `traceparent` into the API's server span, a span's context
//! into the outbox row (and from there, through the relay, into the task),
//! and the stored context back as the parent or a link of the worker's run.
//!
//! Stored form: the W3C `traceparent` value, then, when there is one, a
//! newline and the `tracestate` value (header values hold no newline).

use std::collections::HashMap;

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector},
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Whether spans are exported at all; set once at start. Off, every helper
/// here returns at once.
pub fn enabled() -> bool {
    super::TRACING_ON.load(std::sync::atomic::Ordering::Relaxed)
}

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// The longest `tracestate` kept: W3C's advice for what a vendor may cut
/// to. A client's longer one is dropped (the `traceparent` is kept), so a
/// request cannot make each outbox row and task hash kilobytes larger.
const MAX_TRACESTATE: usize = 512;

/// The context of `span` in its stored form, or `None` when tracing is off.
/// An unsampled context is stored too: the run then follows the sign-up's
/// decision (ParentBased samplers) instead of starting a sampled trace of
/// its own.
pub fn capture(span: &Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut fields = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut Fields(&mut fields))
    });
    let parent = fields.remove(TRACEPARENT)?;
    let state = fields
        .remove(TRACESTATE)
        .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE);
    Some(match state {
        Some(state) => format!("{parent}\n{state}"),
        None => parent,
    })
}

/// The span context a stored context names, if it reads as one. Parsed
/// here rather than through the propagator: a relay batch restores one per
/// row, and the stored form is always ours (version 00, as `capture` wrote
/// it).
pub fn restore(stored: &str) -> Option<SpanContext> {
    if !enabled() {
        return None;
    }
    let (parent, state) = stored.split_once('\n').unwrap_or((stored, ""));
    let mut parts = parent.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() || trace.len() != 32 || span.len() != 16 {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let state = match state {
        "" => TraceState::default(),
        s => s.parse().ok()?,
    };
    let cx = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        state,
    );
    cx.is_valid().then_some(cx)
}

/// Makes `span` a child of the client's context in `headers`, if they carry
/// a valid `traceparent`.
pub fn adopt_client_context(span: &Span, headers: &axum::http::HeaderMap) {
    if !enabled() {
        return;
    }
    if let Some(remote) = extract(&Headers(headers)) {
        let _ = span.set_parent(Context::new().with_remote_span_context(remote));
    }
}

fn extract(carrier: &dyn Extractor) -> Option<SpanContext> {
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(carrier));
    let remote = cx.span().span_context().clone();
    remote.is_valid().then_some(remote)
}

/// The run of a task whose sign-up stored `stored`: its first hand-out is a
/// child of that span; any later run (a retry, a rerun after a lost lease or
/// a hand-back, a retry from the archive) starts a trace of its own with a
/// link to it, so one sign-up's trace does not grow for days and each run
/// stays readable alone.
pub fn join_task(span: &Span, stored: Option<&str>, first_hand_out: bool) {
    let Some(origin) = stored.and_then(restore) else {
        return;
    };
    if first_hand_out {
        let _ = span.set_parent(Context::new().with_remote_span_context(origin));
    } else {
        span.add_link(origin);
    }
}

/// Links `span` (a relay batch) to the spans that wrote its rows.
pub fn link_all<'a>(span: &Span, stored: impl IntoIterator<Item = Option<&'a str>>) {
    if !enabled() {
        return;
    }
    for origin in stored.into_iter().flatten().filter_map(restore) {
        span.add_link(origin);
    }
}

/// The fields the propagator writes a context into.
struct Fields<'a>(&'a mut HashMap<String, String>);

impl Injector for Fields<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct Headers<'a>(&'a axum::http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_context_reads_back_with_its_state() {
        super::super::TRACING_ON.store(true, std::sync::atomic::Ordering::Relaxed);
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let restored = restore(&format!("{parent}\nvendor=abc")).expect("a context");
        assert_eq!(
            restored.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(restored.span_id().to_string(), "00f067aa0ba902b7");
        assert!(restored.is_sampled());
        assert_eq!(restored.trace_state().get("vendor"), Some("abc"));
        assert!(restore("00-zz-00f067aa0ba902b7-01").is_none());
        assert!(restore("").is_none());
    }
}
