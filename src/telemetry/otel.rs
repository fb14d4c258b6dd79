//! The OpenTelemetry pipeline when an OTLP endpoint is set: a tracer
//! provider with the configured sampler and resource, its spans sent through
//! [`BoundedExport`], and W3C trace context as the propagation format.

use std::any::TypeId;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracerProvider, Tracer},
};

use tracing::{
    Subscriber,
    span::{Attributes, Id, Record},
};
use tracing_subscriber::{Layer, layer::Context};

use super::export::{BoundedExport, Limits};
use crate::config::{OtlpProtocol, SamplerChoice, TracingConfig};

/// The name this service's spans are recorded under (instrumentation scope).
const SCOPE: &str = "simplebank";

/// The provider and the tracer the tracing layer writes to, or `None` when
/// no endpoint is set (tracing off).
pub fn start(cfg: &TracingConfig) -> anyhow::Result<Option<(SdkTracerProvider, Tracer)>> {
    let Some(endpoint) = cfg.traces_endpoint() else {
        return Ok(None);
    };
    let make = move || {
        match cfg.protocol {
            OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(cfg.export_timeout())
                .build(),
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(endpoint)
                .with_timeout(cfg.export_timeout())
                .build(),
        }
        .context("OTEL_EXPORTER_OTLP_ENDPOINT: building the OTLP exporter")
    };
    let processor = BoundedExport::start(
        make,
        Limits {
            max_queue: cfg.max_queue_size,
            max_batch: cfg.max_export_batch_size,
            delay: cfg.schedule_delay(),
            timeout: cfg.export_timeout(),
        },
    )
    .context("starting the trace export")?;
    let sampler = match cfg.sampler()? {
        SamplerChoice::AlwaysOn => Sampler::AlwaysOn,
        SamplerChoice::AlwaysOff => Sampler::AlwaysOff,
        SamplerChoice::Ratio(r) => Sampler::TraceIdRatioBased(r),
        SamplerChoice::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        SamplerChoice::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        SamplerChoice::ParentBasedRatio(r) => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
        }
    };
    // The default detectors read OTEL_RESOURCE_ATTRIBUTES; the name comes
    // from OTEL_SERVICE_NAME (or its default).
    let resource = Resource::builder()
        .with_service_name(cfg.service_name.clone())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler)
        .with_resource(resource)
        // A relay batch links each of its rows (RELAY_BATCH_SIZE, at most
        // 10,000); the default keeps 128.
        .with_max_links_per_span(10_000)
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let tracer = provider.tracer(SCOPE);
    Ok(Some((provider, tracer)))
}

/// The tracing layer `L` (OpenTelemetry's) for spans alone: events are not
/// passed to it, so a log line is not copied into its span as a span event
/// (the line carries the span's ids instead). A wrapper rather than a
/// per-layer filter, which costs a lookup in every callback of every span
/// and event.
pub struct SpansOnly<L>(pub L);

impl<S: Subscriber, L: Layer<S>> Layer<S> for SpansOnly<L> {
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.0.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.0.on_layer(subscriber);
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        self.0.on_new_span(attrs, id, ctx);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        self.0.on_record(id, values, ctx);
    }

    fn on_follows_from(&self, id: &Id, follows: &Id, ctx: Context<'_, S>) {
        self.0.on_follows_from(id, follows, ctx);
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        self.0.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        self.0.on_exit(id, ctx);
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        self.0.on_close(id, ctx);
    }

    fn on_id_change(&self, old: &Id, new: &Id, ctx: Context<'_, S>) {
        self.0.on_id_change(old, new, ctx);
    }

    // `tracing_opentelemetry::get_otel_context` and `OpenTelemetrySpanExt`
    // find the layer through this.
    unsafe fn downcast_raw(&self, id: TypeId) -> Option<*const ()> {
        match id {
            id if id == TypeId::of::<Self>() => Some(self as *const Self as *const ()),
            // SAFETY: `L`'s own answer, for a type it says it is or holds.
            _ => unsafe { self.0.downcast_raw(id) },
        }
    }
}
