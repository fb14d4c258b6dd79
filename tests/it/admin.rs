//! The dashboard at /admin: closed without ADMIN_TOKEN, every route 401
//! without a session, changes only with the session's CSRF field; and in a
//! real browser (headless Chromium through chromedriver): log in, see an
//! archived task, press retry, see it leave the archived list.

use std::{process::Stdio, time::Duration};

use fantoccini::{ClientBuilder, Locator};
use simplebank::{
    app::Components,
    queue::{Broker, TaskId, TaskState},
};

use crate::common::*;

const TOKEN: &str = "test-admin-token-0123456789";

/// A task of a kind no handler knows, in queue `default`: archived as soon
/// as the worker takes it. The queue is paused afterwards, so a retried
/// task stays pending (and out of the archive) for the test to see.
async fn archived_task(env: &TestEnv, id: i64) {
    let broker = env.queue();
    broker
        .enqueue(&[task_msg(id, "task:nobody", "default")])
        .await
        .unwrap();
    wait_state(&broker, "default", TaskId::from(id), TaskState::Archived).await;
    broker.pause("default", "test").await.unwrap();
}

fn plain_http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn form(req: reqwest::RequestBuilder, body: &str) -> reqwest::RequestBuilder {
    req.header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned())
}

#[tokio::test]
async fn without_admin_token_the_dashboard_is_closed() {
    let env = TestEnv::new().await;
    let app = env.start(Components::ALL).await;
    let http = plain_http();
    for (method, path) in [
        ("GET", "/admin"),
        ("GET", "/admin/anything"),
        ("POST", "/admin/tasks/default/1/retry"),
        ("POST", "/admin/queues/default/pause"),
        ("POST", "/admin/login"),
    ] {
        let req = match method {
            "GET" => http.get(app.url(path)),
            _ => form(http.post(app.url(path)), &format!("token={TOKEN}&csrf=")),
        };
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 401, "{method} {path}");
        assert!(
            res.text().await.unwrap().contains("closed"),
            "{method} {path}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_change_needs_a_session_and_its_csrf_field() {
    let mut env = TestEnv::new().await;
    env.cfg.http.admin_token = Some(TOKEN.into());
    let app = env.start(Components::ALL).await;
    archived_task(&env, 7).await;
    let broker = env.queue();
    let http = plain_http();

    assert_every_route_refused_without_a_session(&http, &app).await;

    let (cookie, csrf) = log_in_and_see_the_archived_task(&http, &app).await;

    assert_forged_changes_refused(&http, &app, &cookie, &csrf, &broker).await;
    // With it: retried, and back on the page with a notice.
    let res = form(
        http.post(app.url("/admin/tasks/default/7/retry")),
        &format!("csrf={csrf}"),
    )
    .header("cookie", &cookie)
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(
        res.headers()["location"],
        "/admin?done=retried&queue=default&task=7"
    );
    assert_eq!(
        broker
            .task("default", TaskId::from(7))
            .await
            .unwrap()
            .unwrap()
            .state,
        TaskState::Pending
    );
    // A script's way in: the token as a bearer credential (no cookie, no CSRF).
    let res = form(http.post(app.url("/admin/tasks/default/7/delete")), "")
        .header("authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    // Gone from every list; a tombstone keeps a repeated enqueue a no-op.
    assert_eq!(
        broker
            .task("default", TaskId::from(7))
            .await
            .unwrap()
            .unwrap()
            .state,
        TaskState::Deleted
    );
    assert_eq!(broker.stats("default").await.unwrap().pending, 0);
    app.stop().await;
}

/// No session: the login form, 401, on every route.
async fn assert_every_route_refused_without_a_session(http: &reqwest::Client, app: &TestApp) {
    let res = http.get(app.url("/admin")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.text().await.unwrap().contains("name=\"token\""));
    let res = form(http.post(app.url("/admin/tasks/default/7/retry")), "csrf=x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    // Whatever the method or path: 401 first (not 405, 400 or 404).
    for (method, path) in [
        ("GET", "/admin/login"),
        ("GET", "/admin/queues/default/pause"),
        ("POST", "/admin/tasks/default/not-a-number/retry"),
        ("GET", "/admin/"),
    ] {
        let req = match method {
            "GET" => http.get(app.url(path)),
            _ => http.post(app.url(path)),
        };
        assert_eq!(req.send().await.unwrap().status(), 401, "{method} {path}");
    }
    let res = form(http.post(app.url("/admin/login")), "token=not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

/// Logged in: a cookie, and the page shows the archived task. Returns the
/// session cookie and the page's CSRF field.
async fn log_in_and_see_the_archived_task(
    http: &reqwest::Client,
    app: &TestApp,
) -> (String, String) {
    let res = form(
        http.post(app.url("/admin/login")),
        &format!("token={TOKEN}"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 303);
    let set_cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let res = http
        .get(app.url("/admin"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let page = res.text().await.unwrap();
    assert!(page.contains("id=\"archived-7\""), "{page}");
    assert!(
        page.contains(r#"http-equiv="refresh" content="5; url=/admin""#),
        "reloads itself"
    );
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a csrf field")
        .to_owned();
    let res = http
        .get(app.url("/admin/no-such-page"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    (cookie, csrf)
}

/// The session without its CSRF field (a forged form), or with another
/// origin: refused, nothing changed.
async fn assert_forged_changes_refused(
    http: &reqwest::Client,
    app: &TestApp,
    cookie: &str,
    csrf: &str,
    broker: &Broker,
) {
    for (body, origin) in [
        ("csrf=".to_owned(), None),
        (format!("csrf={}", "ab".repeat(32)), None),
        (format!("csrf={csrf}"), Some("http://evil.example")),
    ] {
        let mut req = form(http.post(app.url("/admin/tasks/default/7/retry")), &body)
            .header("cookie", cookie);
        if let Some(origin) = origin {
            req = req.header("origin", origin);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 403, "{body} {origin:?}");
        assert_eq!(
            broker
                .task("default", TaskId::from(7))
                .await
                .unwrap()
                .unwrap()
                .state,
            TaskState::Archived
        );
    }
}

/// chromedriver on a port of its own, stopped (by its PID) when dropped.
struct Driver {
    process: std::process::Child,
    port: u16,
    profile: std::path::PathBuf,
}

impl Driver {
    async fn start() -> Self {
        let port = next_port();
        let process = std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver: `make services` installs it as root (apt-get install chromium chromium-driver)");
        let profile =
            std::env::temp_dir().join(format!("sbchrome-{}", uuid::Uuid::new_v4().simple()));
        eventually(
            Duration::from_secs(20),
            "chromedriver listening",
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
            },
        )
        .await;
        Self {
            process,
            port,
            profile,
        }
    }

    /// A headless Chromium session, kept off the network but for loopback.
    async fn browser(&self) -> fantoccini::Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                    format!("--user-data-dir={}", self.profile.display()),
                ],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// The page reloads itself every few seconds: an element found just before
/// a reload is stale after it. Each of these finds its element afresh, up
/// to three times.
async fn text_of(browser: &fantoccini::Client, id: &str) -> String {
    let mut last = None;
    for _ in 0..3 {
        let found = browser
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Id(id))
            .await;
        match found {
            Ok(element) => match element.text().await {
                Ok(text) => return text,
                Err(e) => last = Some(e),
            },
            Err(e) => last = Some(e),
        }
    }
    panic!("#{id}: {last:?}")
}

async fn click(browser: &fantoccini::Client, id: &str) {
    let mut last = None;
    for _ in 0..3 {
        match browser.find(Locator::Id(id)).await {
            Ok(element) => match element.click().await {
                Ok(()) => return,
                Err(e) => last = Some(e),
            },
            Err(e) => last = Some(e),
        }
    }
    panic!("clicking #{id}: {last:?}")
}

#[tokio::test]
async fn in_a_browser_an_archived_task_is_retried_from_the_dashboard() {
    let mut env = TestEnv::new().await;
    env.cfg.http.admin_token = Some(TOKEN.into());
    // A reload between the click and the reading of its notice would drop
    // the notice (the reload goes to the plain page).
    env.cfg.http.admin_refresh = Duration::from_secs(60);
    let app = env.start(Components::ALL).await;
    // Something to look at besides: a sign-up whose email went out.
    let (status, _) = app.post_json("/v1/create_user", user_json("dasha")).await;
    assert_eq!(status, 200);
    archived_task(&env, 41).await;
    let driver = Driver::start().await;
    let browser = driver.browser().await;

    browser.goto(&app.url("/admin")).await.unwrap();
    browser
        .find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    click(&browser, "login").await;
    let text = text_of(&browser, "archived-41").await;
    assert!(
        text.contains("task:nobody") && text.contains("no handler"),
        "{text}"
    );
    let shot = browser.screenshot().await.unwrap();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(dir.join("admin-dashboard.png"), &shot).unwrap();

    click(&browser, "retry-41").await;
    assert_eq!(
        text_of(&browser, "notice").await,
        "Task 41 of default retried."
    );
    assert!(
        browser.find(Locator::Id("archived-41")).await.is_err(),
        "the task left the archived list"
    );
    assert_eq!(
        env.queue()
            .task("default", TaskId::from(41))
            .await
            .unwrap()
            .unwrap()
            .state,
        TaskState::Pending
    );
    browser.close().await.unwrap();
    drop(driver);
    app.stop().await;
}
