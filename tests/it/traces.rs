//! One trace from the sign-up to the email: `serve` exporting over OTLP to a
//! collector this test runs on loopback (the collector's trace service from
//! opentelemetry-proto, on a listener the test holds).

use std::{
    io::{BufRead, BufReader},
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
    trace::v1::{Span, span::SpanKind},
};
use tokio_util::sync::CancellationToken;

use crate::{common::*, redis_servers::Guarded};

/// The spans a collector received.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = request
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        self.0.lock().unwrap().extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Received {
    fn spans(&self) -> Vec<Span> {
        self.0.lock().unwrap().clone()
    }
}

/// A collector on a loopback port it holds; stopped with `stop`.
struct Collector {
    port: u16,
    received: Received,
    stop: CancellationToken,
    serving: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Received::default();
        let stop = CancellationToken::new();
        let service = TraceServiceServer::new(received.clone());
        let until = stop.clone();
        let serving = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    until.cancelled_owned(),
                )
                .await
                .unwrap();
        });
        Self {
            port,
            received,
            stop,
            serving,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.serving)
            .await
            .expect("the collector stops within 10 s")
            .unwrap();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?;
    match value.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// The one span named `name` with `key` = `value`, once it arrived.
async fn span_where(received: &Received, name: &str, key: &str, value: &str) -> Span {
    eventually(Duration::from_secs(30), name, || async {
        received
            .spans()
            .into_iter()
            .find(|s| s.name == name && attr(s, key).as_deref() == Some(value))
    })
    .await
}

/// `serve` exporting to the collector on `otlp_port`, logging JSON to a
/// pipe, and sending by SMTP to `smtp` when given, into files otherwise.
fn spawn_traced_serve(env: &TestEnv, otlp_port: u16, smtp: Option<&str>) -> (Child, u16) {
    spawn_listening(
        "serve",
        Duration::from_secs(30),
        |port| {
            let mut cmd = env.command(&["serve"]);
            cmd.env("HTTP_ADDR", format!("127.0.0.1:{port}"))
                .env(
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    format!("http://127.0.0.1:{otlp_port}"),
                )
                .env("OTEL_SERVICE_NAME", "simplebank-test")
                .env("OTEL_BSP_SCHEDULE_DELAY", "100")
                .env("OTEL_BSP_EXPORT_TIMEOUT", "2000")
                .env("HTTP_SIGNUP_RATE_LIMIT", "0")
                .env("MAIL_DIR", &env.cfg.mail.dir)
                .env("VERIFY_EMAIL_PROCESS_IN", "0s")
                .env("WORKER_RETRY_UNIT", "100ms")
                .env("ARGON2_MEMORY_KIB", "64")
                .env("ARGON2_ITERATIONS", "1")
                .env("RUST_LOG", "info")
                .env("LOG_FORMAT", "json")
                .stdout(Stdio::piped())
                .stderr(Stdio::null());
            if let Some(url) = smtp {
                cmd.env("SMTP_URL", url);
            }
            cmd
        },
        |_, _| true,
    )
}

/// The JSON log lines of `child`, read on a thread of their own.
fn log_lines(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = BufReader::new(child.stdout.take().unwrap());
    let keep = lines.clone();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            keep.lock().unwrap().push(line);
        }
    });
    lines
}

/// A traced `serve`, ready, with its log lines read (a full pipe would stop
/// it at its next line) and a client for it.
struct Traced {
    serve: Guarded,
    logs: Arc<Mutex<Vec<String>>>,
    base: String,
    http: reqwest::Client,
}

impl Traced {
    async fn start(env: &TestEnv, otlp_port: u16, smtp: Option<&str>) -> Self {
        let (child, port) = spawn_traced_serve(env, otlp_port, smtp);
        let mut serve = Guarded(Some(child));
        let logs = log_lines(serve.0.as_mut().unwrap());
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        eventually(Duration::from_secs(30), "serve ready", || {
            let req = http.get(format!("{base}/readyz")).send();
            async move { req.await.ok().filter(|r| r.status() == 200) }
        })
        .await;
        Self {
            serve,
            logs,
            base,
            http,
        }
    }
}

fn emails_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                .count()
        })
        .unwrap_or(0)
}

/// A sign-up with a client's `traceparent` gives one trace: the client's
/// span -> the server span -> the sign-up transaction -> the task's
/// "create" span -> the worker's first run -> its send; the relay's batch
/// links to the "create" span. A task whose first run fails runs again in
/// a trace of its own that links back to its "create" span. With the
/// collector gone, sign-ups and emails go on and the drop counter moves (a
/// collector that never answers: the next test). Log lines inside the spans
/// carry their trace and span ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_up_and_its_email_are_one_trace() {
    let env = TestEnv::new().await;
    let collector = Collector::start().await;
    let received = collector.received.clone();
    let Traced {
        serve,
        logs,
        base,
        http,
    } = Traced::start(&env, collector.port, None).await;

    // 1. The client's trace, through the outbox, to the email.
    let (trace, client_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let res = http
        .post(format!("{base}/v1/create_user"))
        .header("traceparent", format!("00-{trace}-{client_span}-01"))
        .json(&user_json("traced"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let server = span_where(
        &received,
        "POST /v1/create_user",
        "http.route",
        "/v1/create_user",
    )
    .await;
    assert_eq!(hex(&server.trace_id), trace);
    assert_eq!(
        hex(&server.parent_span_id),
        client_span,
        "a child of the client's span"
    );
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(
        attr(&server, "http.response.status_code").as_deref(),
        Some("200")
    );
    let create = span_where(
        &received,
        "create critical",
        "messaging.operation.type",
        "create",
    )
    .await;
    let task_id = attr(&create, "messaging.message.id").expect("the task id");
    assert_eq!(create.kind, SpanKind::Producer as i32);
    assert_eq!(hex(&create.trace_id), trace);
    let transaction = received
        .spans()
        .into_iter()
        .find(|s| s.span_id == create.parent_span_id)
        .expect("the create span's parent arrived with it");
    assert_eq!(transaction.name, "INSERT users outbox");
    assert_eq!(transaction.kind, SpanKind::Client as i32);
    assert_eq!(
        attr(&transaction, "db.system.name").as_deref(),
        Some("postgresql")
    );
    assert_eq!(transaction.parent_span_id, server.span_id);
    let run = span_where(
        &received,
        "process critical",
        "messaging.message.id",
        &task_id,
    )
    .await;
    assert_eq!(run.kind, SpanKind::Consumer as i32);
    assert_eq!(
        hex(&run.trace_id),
        trace,
        "the run is in the sign-up's trace"
    );
    assert_eq!(
        run.parent_span_id, create.span_id,
        "the first run is a child of the create span"
    );
    let send = eventually(Duration::from_secs(30), "the send span", || async {
        received
            .spans()
            .into_iter()
            .find(|s| s.parent_span_id == run.span_id && s.name == "send email")
    })
    .await;
    assert_eq!(
        attr(&send, "simplebank.mail.outcome").as_deref(),
        Some("sent")
    );
    let batch = eventually(Duration::from_secs(30), "the relay's batch", || async {
        received.spans().into_iter().find(|s| {
            s.name == "send critical" && s.links.iter().any(|l| l.span_id == create.span_id)
        })
    })
    .await;
    assert_eq!(batch.kind, SpanKind::Producer as i32);
    // A log line of the run carries its ids, and names its task.
    let run_span_id = hex(&run.span_id);
    let line_of = |span_id: String| {
        let logs = logs.clone();
        move || {
            let line = logs.lock().unwrap().iter().find_map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                (v["trace_id"] == trace && v["span_id"] == span_id.as_str()).then_some(v)
            });
            async move { line }
        }
    };
    let line = eventually(
        Duration::from_secs(10),
        "a log line with the run's ids",
        line_of(run_span_id),
    )
    .await;
    assert_eq!(line["span"]["task_id"].to_string(), task_id, "{line}");
    // The sign-up's line is logged inside the transaction's span, which has
    // attributes only: the line's span is the request's, with its id, and
    // shows no attribute.
    let line = eventually(
        Duration::from_secs(10),
        "a log line with the transaction's ids",
        line_of(hex(&transaction.span_id)),
    )
    .await;
    assert_eq!(line["message"], "user created", "{line}");
    assert_eq!(
        line["span"],
        serde_json::json!({
            "name": "request",
            "request_id": request_id,
            "method": "POST",
            "path": "/v1/create_user",
        }),
        "{line}"
    );

    // 2. A first run that fails: the retry is a trace of its own, linked.
    let mail_dir = env.cfg.mail.dir.clone();
    let aside = mail_dir.with_extension("aside");
    std::fs::rename(&mail_dir, &aside).unwrap();
    std::fs::write(&mail_dir, b"not a folder").unwrap();
    let res = http
        .post(format!("{base}/v1/create_user"))
        .json(&user_json("retried"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let create2 = eventually(
        Duration::from_secs(30),
        "the second create span",
        || async {
            received.spans().into_iter().find(|s| {
                s.name == "create critical"
                    && attr(s, "messaging.message.id").as_deref() != Some(task_id.as_str())
            })
        },
    )
    .await;
    let task2 = attr(&create2, "messaging.message.id").unwrap();
    let failed = span_where(
        &received,
        "process critical",
        "messaging.message.id",
        &task2,
    )
    .await;
    assert_eq!(
        attr(&failed, "simplebank.task.attempt").as_deref(),
        Some("1")
    );
    assert_eq!(failed.parent_span_id, create2.span_id);
    assert_eq!(
        attr(&failed, "simplebank.task.end").as_deref(),
        Some("retried")
    );
    std::fs::remove_file(&mail_dir).unwrap();
    std::fs::rename(&aside, &mail_dir).unwrap();
    let retry = eventually(Duration::from_secs(30), "the successful retry", || async {
        received.spans().into_iter().find(|s| {
            s.name == "process critical"
                && attr(s, "messaging.message.id").as_deref() == Some(task2.as_str())
                && attr(s, "simplebank.task.end").as_deref() == Some("processed")
        })
    })
    .await;
    assert_ne!(
        attr(&retry, "simplebank.task.attempt").as_deref(),
        Some("1")
    );
    assert_ne!(
        retry.trace_id, create2.trace_id,
        "a retry starts a trace of its own"
    );
    assert!(retry.parent_span_id.is_empty(), "a root span");
    assert!(
        retry
            .links
            .iter()
            .any(|l| l.span_id == create2.span_id && l.trace_id == create2.trace_id),
        "linked to the create span"
    );

    // 3. The collector gone: sign-ups and emails go on, drops are counted.
    collector.stop().await;
    let before = emails_in(&mail_dir);
    for i in 0..20 {
        let res = http
            .post(format!("{base}/v1/create_user"))
            .json(&user_json(&format!("dark{i:02}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    eventually(
        Duration::from_secs(30),
        "every email without a collector",
        || async { (emails_in(&mail_dir) >= before + 20).then_some(()) },
    )
    .await;
    eventually(Duration::from_secs(30), "dropped spans counted", || {
        dropped_spans(&http, &base, None)
    })
    .await;
    assert!(serve.terminate().success(), "serve exits 0 on SIGTERM");
}

/// Spans counted as dropped (for `reason`, or any), once there are some.
async fn dropped_spans(http: &reqwest::Client, base: &str, reason: Option<&str>) -> Option<()> {
    let text = metrics_text(http, base).await?;
    let with = reason.map(|r| ("reason", r));
    (metric_sum(&text, "simplebank_trace_spans_dropped_total", with) > 0.0).then_some(())
}

/// A collector that takes the connection and never answers (a host gone
/// without a FIN, a hung proxy): each export gives up at its timeout, its
/// spans are counted as dropped, and sign-ups and emails go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_holds_up_no_sign_up_or_email() {
    let env = TestEnv::new().await;
    // Never accepted: the kernel completes the handshake and buffers what
    // the exporter sends, and no answer ever comes.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let Traced {
        serve, base, http, ..
    } = Traced::start(&env, silent.local_addr().unwrap().port(), None).await;
    let mail_dir = env.cfg.mail.dir.clone();
    for i in 0..20 {
        let res = http
            .post(format!("{base}/v1/create_user"))
            .json(&user_json(&format!("silent{i:02}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    eventually(
        Duration::from_secs(30),
        "every email beside a silent collector",
        || async { (emails_in(&mail_dir) >= 20).then_some(()) },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "the timed-out exports' spans counted",
        || dropped_spans(&http, &base, Some("export_timed_out")),
    )
    .await;
    assert!(serve.terminate().success(), "serve exits 0 on SIGTERM");
    drop(silent);
}

/// An email sent by SMTP: its send is a client span that names the server
/// (OpenTelemetry's `server.address` and `server.port`) and its outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_smtp_send_is_a_client_span_naming_its_server() {
    let env = TestEnv::new().await;
    let smtp = SmtpProcess::start();
    let collector = Collector::start().await;
    let received = collector.received.clone();
    let Traced {
        serve, base, http, ..
    } = Traced::start(&env, collector.port, Some(&smtp.url())).await;
    let res = http
        .post(format!("{base}/v1/create_user"))
        .json(&user_json("posted"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let send = span_where(&received, "send email", "simplebank.mail.outcome", "sent").await;
    assert_eq!(send.kind, SpanKind::Client as i32);
    assert_eq!(attr(&send, "server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        attr(&send, "server.port"),
        Some(smtp.port.to_string()),
        "the SMTP server's port"
    );
    assert_eq!(
        attr(&send, "network.protocol.name").as_deref(),
        Some("smtp")
    );
    assert_eq!(smtp.messages().len(), 1, "the email went by SMTP");
    assert!(serve.terminate().success(), "serve exits 0 on SIGTERM");
    collector.stop().await;
}
