//! The OpenTelemetry pipeline when an OTLP endpoint is set: a tracer
//! provider with the configured sampler and resource, its spans sent through
//! [`BoundedExport`], and W3C trace context as the propagation format.

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracerProvider, Tracer},
};

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
