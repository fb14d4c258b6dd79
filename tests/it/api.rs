//! POST /v1/create_user, the error shape, and the OpenAPI document.

use serde_json::json;

use std::time::Duration;

use simplebank::app::Components;

use crate::common::{RedisProcess, TestEnv, eventually, user_json, wait_task};

#[tokio::test]
async fn create_user_writes_one_user_and_one_outbox_row() {
    let env = TestEnv::new().await;
    let app = env.start(Components::API).await;
    let (status, body) = app.post_json("/v1/create_user", user_json("alice")).await;
    assert_eq!(status, 200, "{body}");
    let user = &body["user"];
    assert_eq!(user["username"], "alice");
    assert_eq!(user["full_name"], "Test User");
    assert_eq!(user["email"], "alice@example.com");
    assert_eq!(user["is_email_verified"], false);
    for t in ["created_at", "password_changed_at"] {
        chrono::DateTime::parse_from_rfc3339(user[t].as_str().unwrap()).expect("RFC 3339");
    }
    assert!(user.get("password").is_none() && user.get("hashed_password").is_none());
    assert_eq!(user.as_object().unwrap().len(), 6, "{user}");

    assert_eq!(env.count("SELECT count(*) FROM users").await, 1);
    let (kind, queue, payload, max_retry): (String, String, serde_json::Value, i32) =
        sqlx::query_as("SELECT kind, queue, payload, max_retry FROM outbox")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(kind, "task:send_verify_email");
    assert_eq!(queue, "critical");
    assert_eq!(payload, json!({"username": "alice"}));
    assert_eq!(max_retry, 10);
    // The password is hashed with argon2id and appears nowhere in the outbox.
    let hash: String = sqlx::query_scalar("SELECT hashed_password FROM users")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!payload.to_string().contains("secret123"));
    app.stop().await;
}

#[tokio::test]
async fn duplicate_username_or_email_is_409_and_adds_no_outbox_row() {
    let env = TestEnv::new().await;
    let app = env.start(Components::API).await;
    assert_eq!(
        app.post_json("/v1/create_user", user_json("bob")).await.0,
        200
    );

    let (status, body) = app.post_json("/v1/create_user", user_json("bob")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("already_exists")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("username"),
        "{body}"
    );

    // The same address in any case is the same mailbox.
    for email in ["bob@example.com", "BOB@Example.COM"] {
        let mut other = user_json("bob2");
        other["email"] = json!(email);
        let (status, body) = app.post_json("/v1/create_user", other).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (409, Some("already_exists")),
            "{email}: {body}"
        );
        assert!(
            body["message"].as_str().unwrap().contains("email"),
            "{body}"
        );
    }

    assert_eq!(env.count("SELECT count(*) FROM users").await, 1);
    assert_eq!(env.count("SELECT count(*) FROM outbox").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_failure_after_the_user_insert_leaves_neither_row() {
    let env = TestEnv::new().await;
    // Fault injection in the database itself: the outbox insert fails after
    // the user row was written in the same transaction.
    sqlx::raw_sql(
        "CREATE FUNCTION fail_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'injected outbox failure'; END $$;
         CREATE TRIGGER fail_outbox BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION fail_outbox();",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let app = env.start(Components::API).await;
    let res = app
        .http
        .post(app.url("/v1/create_user"))
        .json(&user_json("carol"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 500);
    let header_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let parsed = uuid::Uuid::parse_str(&header_id).expect("the request id is a UUID");
    assert_eq!(parsed.get_version_num(), 4, "{header_id}");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "internal");
    assert_eq!(body["request_id"], header_id.as_str());
    let text = body.to_string();
    assert!(
        !text.contains("injected") && !text.contains("INSERT"),
        "internal details leaked: {text}"
    );

    assert_eq!(env.count("SELECT count(*) FROM users").await, 0);
    assert_eq!(env.count("SELECT count(*) FROM outbox").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn each_invalid_field_is_reported() {
    let env = TestEnv::new().await;
    let app = env.start(Components::API).await;
    let cases = [
        ("username", json!("ab")),
        ("username", json!("Alice")),
        ("username", json!("a".repeat(101))),
        ("full_name", json!("R2D2")),
        ("full_name", json!("ab")),
        ("email", json!("not-an-email")),
        ("email", json!(format!("{}@example.com", "a".repeat(200)))),
        // No SMTPUTF8 in the mailer: refused here, not archived later.
        ("email", json!("zoë@example.com")),
        ("password", json!("12345")),
        ("password", json!("p".repeat(101))),
    ];
    for (field, value) in cases {
        let mut body = user_json("dave");
        body[field] = value.clone();
        let (status, err) = app.post_json("/v1/create_user", body).await;
        assert_eq!(status, 400, "{field}={value}: {err}");
        assert_eq!(err["code"], "invalid_argument");
        let fields: Vec<_> = err["details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, [field], "{field}={value}: {err}");
        assert!(
            !err["details"][0]["description"]
                .as_str()
                .unwrap()
                .is_empty()
        );
    }
    // Every violation at once.
    let (status, err) = app
        .post_json(
            "/v1/create_user",
            json!({"username": "A", "full_name": "1", "email": "x", "password": "1"}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(err["details"].as_array().unwrap().len(), 4, "{err}");
    // Unicode letters are names too.
    let mut body = user_json("erin");
    body["full_name"] = json!("Zoë Ångström");
    assert_eq!(app.post_json("/v1/create_user", body).await.0, 200);

    assert_eq!(env.count("SELECT count(*) FROM users").await, 1);
    assert_eq!(env.count("SELECT count(*) FROM outbox").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn malformed_requests_get_json_errors() {
    let mut env = TestEnv::new().await;
    env.cfg.http.body_limit = 1024;
    let app = env.start(Components::API).await;
    let post = |body: String, ctype: &'static str| {
        let req = app
            .http
            .post(app.url("/v1/create_user"))
            .header("content-type", ctype)
            .body(body);
        async move {
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            (
                status,
                res.json::<serde_json::Value>().await.expect("a JSON body"),
            )
        }
    };
    let (s, b) = post("{not json".into(), "application/json").await;
    assert_eq!(
        (s, b["code"].as_str()),
        (400, Some("invalid_argument")),
        "{b}"
    );
    let (s, b) = post(r#"{"username":"frank"}"#.into(), "application/json").await;
    assert_eq!(
        (s, b["code"].as_str()),
        (400, Some("invalid_argument")),
        "{b}"
    );
    assert!(
        b["message"].as_str().unwrap().contains("missing field"),
        "{b}"
    );
    let (s, b) = post(user_json("frank").to_string(), "text/plain").await;
    assert_eq!(
        (s, b["code"].as_str()),
        (415, Some("unsupported_media_type")),
        "{b}"
    );
    let mut big = user_json("frank");
    big["full_name"] = json!("a".repeat(2000));
    let (s, b) = post(big.to_string(), "application/json").await;
    assert_eq!(
        (s, b["code"].as_str()),
        (413, Some("payload_too_large")),
        "{b}"
    );
    let (s, b) = app.get_json("/v1/nope").await;
    assert_eq!((s, b["code"].as_str()), (404, Some("not_found")), "{b}");
    let (s, b) = app.get_json("/v1/create_user").await;
    assert_eq!(
        (s, b["code"].as_str()),
        (405, Some("method_not_allowed")),
        "{b}"
    );

    assert_eq!(env.count("SELECT count(*) FROM users").await, 0);
    assert_eq!(env.count("SELECT count(*) FROM outbox").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn postgres_unreachable_is_503() {
    let env = TestEnv::new().await;
    let app = env.start(Components::API).await;
    // Point a second app at a port held by a socket that never answers (a
    // hung server; holding it keeps parallel tests off the port). It cannot
    // migrate, so serve the router directly.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = env.cfg.clone();
    cfg.db.url = Some(format!(
        "postgres://x:y@{}/none",
        silent.local_addr().unwrap()
    ));
    cfg.db.acquire_timeout = Duration::from_millis(500);
    let clients = simplebank::app::Clients::new(&cfg).unwrap();
    let state = simplebank::http::AppState {
        pool: clients.pool.clone(),
        broker: clients.broker.clone(),
        signups: simplebank::users::signup::SignUps::new(
            simplebank::outbox::Outbox::new(clients.pool.clone(), Default::default()),
            simplebank::users::password::PasswordHasher::new(&cfg.signup).unwrap(),
            cfg.signup.clone(),
            cfg.retention.idempotency_ttl,
        ),
        scrape: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        axum::serve(listener, simplebank::http::router(state, &cfg.http, None)).into_future(),
    );
    let res = app
        .http
        .post(format!("http://{addr}/v1/create_user"))
        .json(&user_json("gina"))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        (status, &body["code"]),
        (503, &"unavailable".into()),
        "{body}"
    );
    let res = app
        .http
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 503);
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(body["postgres"] == "down", "{body}");
    assert_eq!(body["redis"], "up", "{body}");
    server.abort();
    app.stop().await;
}

#[tokio::test]
async fn redis_down_does_not_change_the_answer_and_the_task_arrives_later() {
    let mut env = TestEnv::new().await;
    let mut redis = RedisProcess::start();
    env.cfg.redis.url = redis.url();
    env.cfg.redis.command_timeout = Duration::from_millis(500);
    env.cfg.relay.max_backoff = Duration::from_millis(200);
    redis.stop();
    let app = env.start(Components::API | Components::RELAY).await;

    let (status, body) = app.post_json("/v1/create_user", user_json("hank")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!(status, 503);
    assert!(body["redis"] == "down", "{body}");
    assert_eq!(body["postgres"], "up");
    assert_eq!(env.undispatched().await, 1);

    redis.restart();
    let queue = env.queue();
    let id = env.only_outbox_id().await;
    wait_task(
        &queue,
        "critical",
        id,
        Duration::from_secs(20),
        "in Redis",
        |_| true,
    )
    .await;
    eventually(Duration::from_secs(10), "the row forwarded", || async {
        (env.undispatched().await == 0).then_some(())
    })
    .await;
    assert_eq!(app.get_json("/readyz").await.0, 200);
    app.stop().await;
}

#[tokio::test]
async fn openapi_document_describes_every_endpoint() {
    let env = TestEnv::new().await;
    let app = env.start(Components::API).await;
    let (status, doc) = app.get_json("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/create_user", "post"),
        ("/v1/verify_email", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing"
        );
    }
    let schema = &doc["components"]["schemas"]["CreateUserRequest"];
    let mut required: Vec<_> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    required.sort();
    assert_eq!(required, ["email", "full_name", "password", "username"]);
    // The document states the rules the server enforces.
    let username = &schema["properties"]["username"];
    assert_eq!(
        (
            &username["minLength"],
            &username["maxLength"],
            &username["pattern"]
        ),
        (&json!(3), &json!(100), &json!("^[a-z0-9_]+$"))
    );
    assert_eq!(schema["properties"]["email"]["format"], "email");
    assert_eq!(schema["properties"]["password"]["minLength"], 6);
    let params = paths["/v1/verify_email"]["get"]["parameters"]
        .as_array()
        .unwrap();
    for p in params {
        assert_eq!(
            (&p["in"], &p["required"]),
            (&json!("query"), &json!(true)),
            "{p}"
        );
    }
    let responses = paths["/v1/create_user"]["post"]["responses"]
        .as_object()
        .unwrap();
    for code in ["200", "400", "409", "413", "415", "503"] {
        assert!(responses.contains_key(code), "create_user lacks {code}");
    }
    app.stop().await;
}
