//! The dashboard at `/admin` of `serve`: each queue's counts, latency and
//! pause, the archived tasks with their last error and retry / delete
//! buttons, the outbox backlog and whether the relay keeps up. Server-rendered
//! HTML (askama templates in `templates/admin/`), refreshing itself; no
//! JavaScript.
//!
//! Closed unless `ADMIN_TOKEN` is set: without a valid session every route
//! answers 401 (with the login form). Changes are POSTs checked for CSRF
//! ([`auth`]) and made through the queue broker, which logs the audit line.

mod auth;
mod overview;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use askama::Template;
use axum::{
    Extension, Form, Router,
    extract::{ConnectInfo, Path, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
};
use serde::Deserialize;
use sqlx::PgPool;

use crate::{
    config::Config,
    queue::{Broker, QueueWeight, Repair, TaskId},
};
use auth::{Key, Session};

/// Archived tasks shown per queue, newest first.
const ARCHIVED_SHOWN: u64 = 50;

/// What the dashboard reads and changes.
pub struct Dashboard {
    /// `None`: ADMIN_TOKEN is unset and the dashboard closed.
    key: Option<Key>,
    broker: Broker,
    pool: PgPool,
    queues: Vec<QueueWeight>,
    relay_max_age: Duration,
    /// How long a deleted task's tombstone stays (WORKER_DONE_RETENTION).
    retention: Duration,
    /// How often the page reloads itself (ADMIN_REFRESH).
    refresh: Duration,
}

impl Dashboard {
    /// The dashboard of a `serve` with these settings.
    pub fn new(cfg: &Config, broker: Broker, pool: PgPool) -> Self {
        Self {
            key: cfg.http.admin_token.as_deref().map(Key::new),
            broker,
            pool,
            queues: cfg.worker.queues.by_priority(),
            relay_max_age: cfg.relay.ready_max_age,
            retention: cfg.worker.done_retention,
            refresh: cfg.http.admin_refresh,
        }
    }

    fn session(&self, headers: &HeaderMap) -> Option<Session> {
        self.key
            .as_ref()?
            .session(headers, chrono::Utc::now().timestamp())
    }

    fn knows_queue(&self, queue: &str) -> bool {
        self.queues.iter().any(|q| q.queue == queue)
    }
}

/// The dashboard's routes, for any router state.
pub fn router<S: Clone + Send + Sync + 'static>(dashboard: Dashboard) -> Router<S> {
    let dashboard = Arc::new(dashboard);
    Router::new()
        .route("/admin", get(overview::index))
        .route("/admin/login", post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/queues/{queue}/{action}", post(queue_action))
        .route("/admin/tasks/{queue}/{id}/{action}", post(task_action))
        .route("/admin/", get(unknown).post(unknown))
        .route("/admin/{*rest}", get(unknown).post(unknown))
        // On every route, before its extractors and its 405: whatever is
        // asked, without a session the answer is 401.
        .layer(middleware::from_fn_with_state(dashboard.clone(), gate))
        .with_state(dashboard)
}

/// Lets through the login form's own routes, and requests with a session.
async fn gate(State(d): Shared, req: Request, next: Next) -> Response {
    let open = matches!(
        (req.method(), req.uri().path()),
        (&Method::GET, "/admin") | (&Method::POST, "/admin/login" | "/admin/logout")
    );
    match open || d.session(req.headers()).is_some() {
        true => next.run(req).await,
        false => unauthorized(&d, None),
    }
}

type Shared = State<Arc<Dashboard>>;

/// Every page: not cached, not framed (no clickjacking of its buttons).
fn page(status: StatusCode, html: String) -> Response {
    let mut res = (status, Html(html)).into_response();
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
    );
    res
}

fn render(template: &impl Template) -> String {
    template
        .render()
        .unwrap_or_else(|e| format!("<p>the page could not be rendered: {e}</p>"))
}

#[derive(Template)]
#[template(path = "admin/login.html")]
struct LoginPage<'a> {
    /// Why the form is shown again.
    problem: Option<&'a str>,
    closed: bool,
}

/// 401 with the login form (or, when closed, a page saying so).
fn unauthorized(d: &Dashboard, problem: Option<&str>) -> Response {
    let mut res = page(
        StatusCode::UNAUTHORIZED,
        render(&LoginPage {
            problem,
            closed: d.key.is_none(),
        }),
    );
    res.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(r#"Bearer realm="simplebank admin""#),
    );
    res
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(d): Shared,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let Some(key) = &d.key else {
        return unauthorized(&d, None);
    };
    let actor = actor(peer);
    if !key.is_token(&form.token) {
        tracing::warn!(target: "audit", actor, action = "login", outcome = "refused", "audit");
        return unauthorized(&d, Some("That is not the token."));
    }
    tracing::info!(target: "audit", actor, action = "login", outcome = "logged in", "audit");
    let cookie = key.new_session(chrono::Utc::now().timestamp());
    let mut res = Redirect::to("/admin").into_response();
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&auth::set_cookie(Some(&cookie), behind_tls(&headers)))
            .expect("cookie text is ASCII"),
    );
    res
}

/// Whether the browser reached us over TLS (a proxy in front says so): the
/// cookie is then Secure, never sent in clear. A forged header only keeps
/// the forger's own cookie off plain HTTP.
fn behind_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

async fn logout(headers: HeaderMap) -> Response {
    let mut res = Redirect::to("/admin").into_response();
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&auth::set_cookie(None, behind_tls(&headers)))
            .expect("cookie text is ASCII"),
    );
    res
}

async fn unknown(State(d): Shared, headers: HeaderMap) -> Response {
    match d.session(&headers) {
        Some(_) => page(StatusCode::NOT_FOUND, "<p>No such page.</p>".into()),
        None => unauthorized(&d, None),
    }
}

#[derive(Deserialize)]
struct ChangeForm {
    #[serde(default)]
    csrf: String,
}

/// Why a change to `queue` is refused: no session (401), a CSRF field or
/// origin that does not pass (403), a queue not in WORKER_QUEUES (404).
/// `None`: it may go on.
fn refusal(d: &Dashboard, headers: &HeaderMap, form: &ChangeForm, queue: &str) -> Option<Response> {
    let (Some(key), Some(session)) = (&d.key, d.session(headers)) else {
        return Some(unauthorized(d, None));
    };
    if !key.allows_change(&session, headers, &form.csrf) {
        return Some(page(
            StatusCode::FORBIDDEN,
            "<p>This form is stale or did not come from the dashboard. Reload the dashboard and try again.</p>".into(),
        ));
    }
    (!d.knows_queue(queue)).then(|| page(StatusCode::NOT_FOUND, "<p>No such queue.</p>".into()))
}

/// Who made a change, for the audit line.
fn actor(peer: Option<Extension<ConnectInfo<SocketAddr>>>) -> String {
    match peer {
        Some(Extension(ConnectInfo(addr))) => format!("dashboard:{}", addr.ip().to_canonical()),
        None => "dashboard".into(),
    }
}

fn back(verb: &str, queue: &str, task: Option<TaskId>) -> Response {
    let task = task.map(|id| format!("&task={id}")).unwrap_or_default();
    let queue: String = url::form_urlencoded::byte_serialize(queue.as_bytes()).collect();
    Redirect::to(&format!("/admin?done={verb}&queue={queue}{task}")).into_response()
}

async fn queue_action(
    State(d): Shared,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Path((queue, action)): Path<(String, String)>,
    Form(form): Form<ChangeForm>,
) -> Response {
    if let Some(refused) = refusal(&d, &headers, &form, &queue) {
        return refused;
    }
    let actor = actor(peer);
    let (changed, verb) = match action.as_str() {
        "pause" => (d.broker.pause(&queue, &actor).await, "paused"),
        "resume" => (d.broker.resume(&queue, &actor).await, "resumed"),
        _ => return page(StatusCode::NOT_FOUND, "<p>No such action.</p>".into()),
    };
    match changed {
        Ok(true) => back(verb, &queue, None),
        Ok(false) => back("unchanged", &queue, None),
        Err(e) => failed(&e),
    }
}

async fn task_action(
    State(d): Shared,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Path((queue, id, action)): Path<(String, TaskId, String)>,
    Form(form): Form<ChangeForm>,
) -> Response {
    if let Some(refused) = refusal(&d, &headers, &form, &queue) {
        return refused;
    }
    let actor = actor(peer);
    let (repair, verb) = match action.as_str() {
        "retry" => (
            d.broker
                .run_now(&queue, id, &actor)
                .await
                .map_err(Into::into),
            "retried",
        ),
        "delete" => (
            crate::tasks::ledger::delete_task(&d.pool, &d.broker, &queue, id, d.retention, &actor)
                .await,
            "deleted",
        ),
        _ => return page(StatusCode::NOT_FOUND, "<p>No such action.</p>".into()),
    };
    match repair {
        Ok(Repair::Done { .. }) => back(verb, &queue, Some(id)),
        Ok(_) => back("unchanged", &queue, Some(id)),
        Err(e) => failed(&e),
    }
}

fn failed(e: &dyn std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "dashboard: a change failed");
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "<p>Redis did not answer; nothing may have changed. Go back and try again.</p>".into(),
    )
}
