//! Part 7, what tracing costs: POST /v1/create_user under wrk and a
//! `relay --once` drain, each with tracing off, on (OTEL_TRACES_SAMPLER
//! always_on, every span exported over OTLP to a collector this harness runs
//! on loopback), and on with a collector that never answers, in rounds of
//! one run each that start with the next side in turn, medians compared.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};

use super::*;

/// A collector that counts the spans it receives.
#[derive(Clone, Default)]
struct Counting(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Counting {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Rows of the traced drain, each with a trace context to link to.
const TRACED_BACKLOG: &str = "UPDATE outbox SET trace_context =
    '00-' || md5(id::text) || '-' || substr(md5(id::text || 's'), 1, 16) || '-01'";

impl Bench {
    /// The OTLP settings of a child process: exporting every span to
    /// `otlp`, or, without, none at all (whatever the shell set).
    pub(crate) fn traced(&self, mut cmd: Command, otlp: Option<&str>) -> Command {
        match otlp {
            Some(endpoint) => cmd
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
                .env("OTEL_TRACES_SAMPLER", "always_on"),
            None => cmd
                .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
                .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        };
        cmd
    }

    /// 7. create_user and the relay drain with tracing off and on.
    pub(crate) async fn tracing_cost(&self) -> anyhow::Result<Vec<Row>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let received = Counting::default();
        let stop_collector = tokio_util::sync::CancellationToken::new();
        let collector = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(received.clone()))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    stop_collector.clone().cancelled_owned(),
                ),
        );
        // A collector that never answers: bound and never accepted, so the
        // kernel takes the connection and what is sent, and no reply comes.
        let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
        let silent_endpoint = format!("http://{}", silent.local_addr()?);
        let lua = std::env::temp_dir().join("simplebank-bench-create-user.lua");
        std::fs::write(&lua, http_load::WRK_CREATE_USER)?;
        let n = self.args.tracing_rows;
        let (mut http, mut drain) = (<[Vec<f64>; 3]>::default(), <[Vec<f64>; 3]>::default());
        // CPU per sign-up, `serve`'s and the whole machine's: steadier views
        // of the same cost (the rate moves with whatever else the two cores
        // run). And each round's rates on against off, taken minutes apart
        // at most, so slow drift of the machine falls on both.
        let (mut cpu, mut machine) = (<[Vec<f64>; 3]>::default(), <[Vec<f64>; 3]>::default());
        let mut paired = <[Vec<f64>; 2]>::default();
        let mut spans = 0;
        const SIDES: [&str; 3] = ["off", "on", "on, collector not answering"];
        for round in 1..=self.args.http_rounds.max(1) {
            // Each round starts with the next side: a later run meets the
            // earlier ones' leftovers (WAL to checkpoint, dead rows to
            // vacuum), which must not always fall on one side.
            let mut order = [
                (0, None),
                (1, Some(endpoint.as_str())),
                (2, Some(silent_endpoint.as_str())),
            ];
            order.rotate_left((round as usize - 1) % 3);
            for (i, otlp) in order {
                self.reset().await?;
                let before = received.0.load(Ordering::Relaxed);
                let run = self.wrk_create_user(&lua, otlp).await?;
                self.backlog(n).await?;
                sqlx::raw_sql(TRACED_BACKLOG).execute(&self.pool).await?;
                let rate = self.relay_once(n, otlp).await?;
                let got = received.0.load(Ordering::Relaxed) - before;
                spans += got;
                println!(
                    "tracing round {round}, {}: create_user {:.0} req/s (p99 {}, CPU a request: serve {:.0} us, machine {:.0} us), relay drain {rate:.0} rows/s, {got} spans received",
                    SIDES[i], run.rps, run.p99, run.serve_cpu_us, run.machine_cpu_us
                );
                http[i].push(run.rps);
                cpu[i].push(run.serve_cpu_us);
                machine[i].push(run.machine_cpu_us);
                drain[i].push(rate);
            }
            let last = |side: usize| http[side].last().copied().unwrap_or(f64::NAN);
            paired[0].push(last(1) / last(0));
            paired[1].push(last(2) / last(0));
        }
        stop_collector.cancel();
        let _ = collector.await;
        drop(silent);
        let [http_off, http_on, http_silent] = http.each_mut().map(|v| median(v.as_mut_slice()));
        let [drain_off, drain_on, drain_silent] =
            drain.each_mut().map(|v| median(v.as_mut_slice()));
        let [cpu_off, cpu_on, cpu_silent] = cpu.each_mut().map(|v| median(v.as_mut_slice()));
        let [machine_off, machine_on, machine_silent] =
            machine.each_mut().map(|v| median(v.as_mut_slice()));
        let [paired_on, paired_silent] = paired.each_mut().map(|v| median(v.as_mut_slice()));
        // A create_user side's rate, with its CPU a sign-up beside off's and
        // the median of its rounds' rates against off's.
        let with_cpu = |rate: f64, cpu: f64, machine: f64, paired: f64| {
            format!(
                "{} (CPU a sign-up, against off: serve {cpu:.0} us / {cpu_off:.0}, the machine {machine:.0} us / {machine_off:.0}, so {:.2}; the rounds' own ratios, median {paired:.2})",
                per_s(rate),
                machine_off / machine,
            )
        };
        let rounds = self.args.http_rounds.max(1);
        // Each side's median beside tracing off's.
        let vs_off = |row: Row, side: f64, off: f64| {
            row.limit(
                format!("{} tracing off (medians of {rounds})", per_s(off)),
                side / off,
            )
        };
        Ok(vec![
            vs_off(
                Row::new(
                    "7. POST /v1/create_user, tracing on, always_on (req/s)",
                    with_cpu(http_on, cpu_on, machine_on, paired_on),
                ),
                http_on,
                http_off,
            )
            .target("<= 10 % slower", http_on / http_off >= 0.9),
            vs_off(
                Row::new(
                    format!("7. relay drain, {n} rows with trace contexts, tracing on (rows/s)"),
                    format!("{} ({spans} spans received in all)", per_s(drain_on)),
                ),
                drain_on,
                drain_off,
            )
            .target("<= 10 % slower", drain_on / drain_off >= 0.9),
            vs_off(
                Row::new(
                    "7. POST /v1/create_user, tracing on, collector not answering (req/s)",
                    with_cpu(http_silent, cpu_silent, machine_silent, paired_silent),
                ),
                http_silent,
                http_off,
            )
            .target("<= 10 % slower", http_silent / http_off >= 0.9),
            vs_off(
                Row::new(
                    format!(
                        "7. relay drain, {n} rows, tracing on, collector not answering (rows/s; the exit waits up to 5 s for the last export)"
                    ),
                    per_s(drain_silent),
                ),
                drain_silent,
                drain_off,
            ),
        ])
    }
}
