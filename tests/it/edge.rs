//! The public edge: hashing slots, limits, timeouts, panics and request ids
//! answered the usual way (the thousand-client test is tests/crowd.rs).

use std::time::Duration;

use simplebank::app::Components;

use crate::common::{TestEnv, user_json};

#[tokio::test]
async fn sign_ups_beyond_the_hashing_slots_are_refused_fast_with_retry_after() {
    let mut env = TestEnv::new().await;
    // One slot, a real hash (tens of ms), a short wait for the slot.
    env.cfg.signup.argon2_memory_kib = 19_456;
    env.cfg.signup.argon2_iterations = 2;
    env.cfg.signup.argon2_max_concurrent = Some(1);
    env.cfg.signup.argon2_queue_wait = Duration::from_millis(20);
    let app = env.start(Components::API).await;
    let requests = (0..20).map(|i| {
        let app = &app;
        async move {
            let res = app
                .http
                .post(app.url("/v1/create_user"))
                .json(&user_json(&format!("crowd{i}")))
                .send()
                .await
                .unwrap();
            let retry_after = res.headers().get("retry-after").cloned();
            let status = res.status().as_u16();
            let body: serde_json::Value = res.json().await.unwrap();
            (status, retry_after, body)
        }
    });
    let answers = futures::future::join_all(requests).await;
    let created = answers.iter().filter(|(s, _, _)| *s == 200).count();
    let busy: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 503).collect();
    assert_eq!(created + busy.len(), 20, "only 200 or 503: {answers:?}");
    assert!(
        created >= 1 && !busy.is_empty(),
        "{created} created, {} busy",
        busy.len()
    );
    for (_, retry_after, body) in &busy {
        assert_eq!(body["code"], "unavailable");
        assert_eq!(retry_after.as_ref().unwrap(), "1");
    }
    assert_eq!(
        env.count("SELECT count(*) FROM users").await,
        created as i64
    );
    app.stop().await;
}

/// A throw-away server of `router` behind the edge layers of `env`'s config.
async fn serve_with_edge(env: &TestEnv, router: axum::Router) -> String {
    let router = simplebank::http::edge::layers(router, &env.cfg.http);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .into_future(),
    );
    format!("http://{addr}")
}

#[tokio::test]
async fn a_panic_a_slow_request_and_odd_request_ids_get_the_usual_answers() {
    let mut env = TestEnv::new().await;
    env.cfg.http.request_timeout = Duration::from_millis(200);
    let router = axum::Router::new()
        .route(
            "/boom",
            axum::routing::get(|| async {
                panic!("secret detail");
                #[allow(unreachable_code)]
                ""
            }),
        )
        .route(
            "/slow",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .route("/ok", axum::routing::get(|| async { "ok" }));
    let base = serve_with_edge(&env, router).await;
    let http = reqwest::Client::new();

    let res = http.get(format!("{base}/boom")).send().await.unwrap();
    assert_eq!(res.status(), 500);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "internal");
    assert!(!body.to_string().contains("secret detail"), "{body}");
    assert!(
        !body["request_id"].as_str().unwrap_or("").is_empty(),
        "{body}"
    );

    let started = std::time::Instant::now();
    let res = http.get(format!("{base}/slow")).send().await.unwrap();
    assert_eq!(res.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(4));
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "unavailable");

    let id_of =
        |res: &reqwest::Response| res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let res = http
        .get(format!("{base}/ok"))
        .header("x-request-id", "abc-123_x.y")
        .send()
        .await
        .unwrap();
    assert_eq!(id_of(&res), "abc-123_x.y", "a plain id is kept");
    for odd in ["a b", &"x".repeat(65), "a\"b"] {
        let res = http
            .get(format!("{base}/ok"))
            .header("x-request-id", odd)
            .send()
            .await
            .unwrap();
        let id = id_of(&res);
        assert!(
            id != odd && uuid::Uuid::parse_str(&id).is_ok(),
            "{odd:?} -> {id}"
        );
    }
}

#[tokio::test]
async fn each_client_address_has_its_rate_and_forwarded_for_counts_only_from_trusted_proxies() {
    let mut env = TestEnv::new().await;
    env.cfg.http.rate_limit = 60;
    env.cfg.http.rate_burst = 3;
    let ok = || axum::Router::new().route("/ok", axum::routing::get(|| async { "ok" }));
    let direct = serve_with_edge(&env, ok()).await;
    env.cfg.http.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    let proxied = serve_with_edge(&env, ok()).await;
    let http = reqwest::Client::new();
    let get = |base: &str, forwarded: Option<&str>| {
        let mut req = http.get(format!("{base}/ok"));
        if let Some(f) = forwarded {
            req = req.header("x-forwarded-for", f);
        }
        async move {
            let res = req.send().await.unwrap();
            let retry_after = res.headers().get("retry-after").cloned();
            (res.status().as_u16(), retry_after)
        }
    };
    // Straight from a client: three at once, then 429 with Retry-After,
    // whatever X-Forwarded-For it claims.
    for _ in 0..3 {
        assert_eq!(get(&direct, None).await.0, 200);
    }
    let (status, retry_after) = get(&direct, Some("203.0.113.9")).await;
    assert_eq!(status, 429);
    assert!(
        retry_after
            .unwrap()
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    // Behind a trusted proxy: one bucket per forwarded address; an address
    // a client put before the proxy's own entry does not count.
    for _ in 0..3 {
        assert_eq!(get(&proxied, Some("198.51.100.1")).await.0, 200);
    }
    assert_eq!(get(&proxied, Some("198.51.100.1")).await.0, 429);
    assert_eq!(get(&proxied, Some("198.51.100.2")).await.0, 200);
    assert_eq!(
        get(&proxied, Some("203.0.113.7, 198.51.100.1")).await.0,
        429
    );
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut env = TestEnv::new().await;
    env.cfg.http.header_timeout = Duration::from_millis(300);
    let app = env.start(Components::API).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /v1/create_user HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // ...and never the rest. The server closes the connection.
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf))
        .await
        .expect("the server ends the connection");
    let n = read.unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "{answer}");
    // A client that connects and sends nothing at all is closed as well.
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("the server ends a silent connection");
    assert_eq!(read.unwrap_or(0), 0);
    // Others are served as usual.
    assert_eq!(app.get_json("/healthz").await.0, 200);
    app.stop().await;
}
