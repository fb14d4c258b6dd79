//! Trace export settings: OpenTelemetry's own variables, so a deployment
//! configures this service as it does any other. Without an endpoint,
//! tracing is off and costs nothing.

use std::time::Duration;

use clap::{Args, ValueEnum};

use super::check::{InvalidSetting, at_least, bad, in_range};

/// How spans travel to the collector (OTEL_EXPORTER_OTLP_PROTOCOL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (port 4317 by convention).
    #[value(name = "grpc")]
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318, path /v1/traces).
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Tracing (OpenTelemetry)")]
pub struct TracingConfig {
    /// Where spans are exported (OTLP), e.g. http://127.0.0.1:4317. Unset:
    /// no tracing at all.
    #[arg(
        id = "otel_endpoint",
        value_name = "OTEL_EXPORTER_OTLP_ENDPOINT",
        long = "otel-endpoint",
        env = "OTEL_EXPORTER_OTLP_ENDPOINT"
    )]
    pub endpoint: Option<String>,
    /// The traces endpoint itself, used as given (no /v1/traces added);
    /// wins over OTEL_EXPORTER_OTLP_ENDPOINT.
    #[arg(
        id = "otel_traces_endpoint",
        value_name = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        long = "otel-traces-endpoint",
        env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )]
    pub traces_endpoint: Option<String>,
    /// OTLP transport.
    #[arg(id = "otel_protocol", value_name = "OTEL_EXPORTER_OTLP_PROTOCOL", long = "otel-protocol", env = "OTEL_EXPORTER_OTLP_PROTOCOL", value_enum, default_value_t = OtlpProtocol::Grpc)]
    pub protocol: OtlpProtocol,
    /// The service's name in traces (resource attribute service.name).
    /// Other resource attributes: OTEL_RESOURCE_ATTRIBUTES (k=v,k=v).
    #[arg(
        id = "otel_service_name",
        value_name = "OTEL_SERVICE_NAME",
        long = "otel-service-name",
        env = "OTEL_SERVICE_NAME",
        default_value = "simplebank"
    )]
    pub service_name: String,
    /// Which traces are kept: always_on, always_off, traceidratio,
    /// parentbased_always_on, parentbased_always_off or
    /// parentbased_traceidratio.
    #[arg(
        id = "otel_sampler",
        value_name = "OTEL_TRACES_SAMPLER",
        long = "otel-traces-sampler",
        env = "OTEL_TRACES_SAMPLER",
        default_value = "parentbased_always_on"
    )]
    pub sampler: String,
    /// The ratio of the *traceidratio samplers, from 0 to 1.
    #[arg(
        id = "otel_sampler_arg",
        value_name = "OTEL_TRACES_SAMPLER_ARG",
        long = "otel-traces-sampler-arg",
        env = "OTEL_TRACES_SAMPLER_ARG"
    )]
    pub sampler_arg: Option<f64>,
    /// Most finished spans waiting for export; beyond, spans are dropped
    /// (and counted), so a collector that is away never holds up a request
    /// or a task.
    #[arg(
        id = "otel_bsp_max_queue_size",
        value_name = "OTEL_BSP_MAX_QUEUE_SIZE",
        long = "otel-bsp-max-queue-size",
        env = "OTEL_BSP_MAX_QUEUE_SIZE",
        default_value_t = 2048
    )]
    pub max_queue_size: usize,
    /// Most spans in one export.
    #[arg(
        id = "otel_bsp_max_export_batch_size",
        value_name = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
        long = "otel-bsp-max-export-batch-size",
        env = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
        default_value_t = 512
    )]
    pub max_export_batch_size: usize,
    /// Longest a finished span waits before its batch is sent, in ms.
    #[arg(
        id = "otel_bsp_schedule_delay",
        value_name = "OTEL_BSP_SCHEDULE_DELAY",
        long = "otel-bsp-schedule-delay",
        env = "OTEL_BSP_SCHEDULE_DELAY",
        default_value_t = 5000
    )]
    pub schedule_delay_ms: u64,
    /// Longest one export may take, in ms; then its spans are dropped.
    #[arg(
        id = "otel_bsp_export_timeout",
        value_name = "OTEL_BSP_EXPORT_TIMEOUT",
        long = "otel-bsp-export-timeout",
        env = "OTEL_BSP_EXPORT_TIMEOUT",
        default_value_t = 30000
    )]
    pub export_timeout_ms: u64,
}

/// A sampler as OTEL_TRACES_SAMPLER names it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerChoice {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedRatio(f64),
}

impl TracingConfig {
    /// The OTLP traces endpoint, when tracing is on.
    pub fn traces_endpoint(&self) -> Option<String> {
        let nonempty = |s: &Option<String>| {
            s.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        if let Some(e) = nonempty(&self.traces_endpoint) {
            return Some(e);
        }
        let base = nonempty(&self.endpoint)?;
        Some(match self.protocol {
            OtlpProtocol::Grpc => base,
            // The generic endpoint names the collector; HTTP's traces path is
            // under it (OpenTelemetry's exporter specification).
            OtlpProtocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
        })
    }

    pub fn schedule_delay(&self) -> Duration {
        Duration::from_millis(self.schedule_delay_ms)
    }

    pub fn export_timeout(&self) -> Duration {
        Duration::from_millis(self.export_timeout_ms)
    }

    /// OTEL_TRACES_SAMPLER and its argument.
    pub fn sampler(&self) -> Result<SamplerChoice, InvalidSetting> {
        let ratio = || -> Result<f64, InvalidSetting> {
            let r = self.sampler_arg.unwrap_or(1.0);
            if !(0.0..=1.0).contains(&r) {
                return Err(bad(
                    "OTEL_TRACES_SAMPLER_ARG",
                    format!("must be from 0 to 1 (is {r})"),
                ));
            }
            Ok(r)
        };
        Ok(match self.sampler.as_str() {
            "always_on" => SamplerChoice::AlwaysOn,
            "always_off" => SamplerChoice::AlwaysOff,
            "traceidratio" => SamplerChoice::Ratio(ratio()?),
            "parentbased_always_on" => SamplerChoice::ParentBasedAlwaysOn,
            "parentbased_always_off" => SamplerChoice::ParentBasedAlwaysOff,
            "parentbased_traceidratio" => SamplerChoice::ParentBasedRatio(ratio()?),
            other => {
                return Err(bad(
                    "OTEL_TRACES_SAMPLER",
                    format!(
                        "must be always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio (is {other:?})"
                    ),
                ));
            }
        })
    }

    pub(super) fn validate(&self) -> Result<(), InvalidSetting> {
        self.sampler()?;
        if let Some(endpoint) = self.traces_endpoint() {
            let var = match self.traces_endpoint.is_some() {
                true => "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                false => "OTEL_EXPORTER_OTLP_ENDPOINT",
            };
            let url =
                url::Url::parse(&endpoint).map_err(|e| bad(var, format!("is not a URL ({e})")))?;
            // No TLS client is built in for the exporter: an https://
            // collector would refuse every export. A collector on the host
            // or beside it (an agent) takes plain OTLP.
            if url.scheme() != "http" {
                return Err(bad(
                    var,
                    "must be an http:// URL (TLS to the collector is not built in: export to an agent on the host or the pod)",
                ));
            }
        }
        in_range("OTEL_BSP_MAX_QUEUE_SIZE", self.max_queue_size, 1, 1_000_000)?;
        in_range(
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
            self.max_export_batch_size,
            1,
            self.max_queue_size.max(1),
        )?;
        at_least(
            "OTEL_BSP_SCHEDULE_DELAY",
            self.schedule_delay(),
            Duration::from_millis(1),
        )?;
        at_least(
            "OTEL_BSP_EXPORT_TIMEOUT",
            self.export_timeout(),
            Duration::from_millis(1),
        )
    }
}
