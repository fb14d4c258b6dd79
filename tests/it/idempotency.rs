//! `Idempotency-Key` on POST /v1/create_user: a sign-up whose reply was lost
//! is safe to retry.

use std::time::Duration;

use simplebank::{app::Components, retention::Retention};
use tokio_util::sync::CancellationToken;

use crate::common::{CuttableLink, TestEnv, eventually, user_json};

/// POSTs a sign-up of `body` with `key` to `base`; status, replayed or not, body.
async fn sign_up(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    body: &serde_json::Value,
) -> reqwest::Result<(u16, bool, serde_json::Value)> {
    let res = http
        .post(format!("{base}/v1/create_user"))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await?;
    let replayed = res.headers().get("idempotent-replayed").is_some();
    Ok((res.status().as_u16(), replayed, res.json().await?))
}

#[tokio::test]
async fn a_sign_up_whose_reply_was_lost_is_retried_with_its_key() {
    let env = TestEnv::new().await;
    let app = env.start(Components::ALL).await;
    let addr = app.base.trim_start_matches("http://").parse().unwrap();
    let link = CuttableLink::to(addr).await;
    let base = format!("http://127.0.0.1:{}", link.port);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let body = user_json("lia");
    // The sign-up commits; its reply is lost on the way back. The client
    // waits until the commit is seen: one that gave up first would close
    // its connection while a loaded machine still works on the request,
    // and the request would end with it.
    link.swallow_replies();
    let first = tokio::spawn({
        let (base, body) = (base.clone(), body.clone());
        async move {
            let patient = reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap();
            sign_up(&patient, &base, "k-1", &body).await
        }
    });
    eventually(Duration::from_secs(30), "the sign-up committed", || async {
        (env.count("SELECT count(*) FROM users").await == 1).then_some(())
    })
    .await;
    // The client's connection ends without a reply; a new one carries the
    // retry.
    let mut link = link;
    link.cut().await;
    assert!(first.await.unwrap().is_err(), "no reply");
    link.restore().await;
    // The retry with its key: the first answer, nothing done again.
    let (status, replayed, answer) = sign_up(&http, &base, "k-1", &body).await.unwrap();
    assert_eq!((status, replayed), (200, true), "{answer}");
    assert_eq!(answer["user"]["username"], "lia");
    assert_eq!(answer["user"]["is_email_verified"], false);
    let again = sign_up(&http, &base, "\"k-1\"", &body).await.unwrap();
    assert_eq!(again.2, answer, "the same answer every time");
    // One account, one task, one email.
    assert_eq!(env.count("SELECT count(*) FROM users").await, 1);
    assert_eq!(env.count("SELECT count(*) FROM outbox").await, 1);
    eventually(Duration::from_secs(20), "the one email sent", || async {
        (env.count("SELECT count(*) FROM email_sends WHERE outcome = 'sent'")
            .await
            == 1)
            .then_some(())
    })
    .await;
    // The same key with another body, or another password: refused.
    let mut other = body.clone();
    other["full_name"] = "Someone Else".into();
    assert_eq!(sign_up(&http, &base, "k-1", &other).await.unwrap().0, 422);
    let mut other_password = body.clone();
    other_password["password"] = "another-secret".into();
    assert_eq!(
        sign_up(&http, &base, "k-1", &other_password)
            .await
            .unwrap()
            .0,
        422
    );
    // Without the key, a retry is a second sign-up: refused as taken.
    assert_eq!(app.post_json("/v1/create_user", body.clone()).await.0, 409);
    // A bad key changes nothing.
    assert_eq!(
        sign_up(&http, &base, "", &user_json("bea"))
            .await
            .unwrap()
            .0,
        400
    );
    assert_eq!(env.count("SELECT count(*) FROM users").await, 1);
    // Past IDEMPOTENCY_TTL the key is forgotten: the retry is a new sign-up.
    sqlx::query("UPDATE idempotency_keys SET created_at = created_at - interval '25 hours'")
        .execute(&env.pool)
        .await
        .unwrap();
    let retention = Retention::new(env.pool.clone(), env.cfg.retention.clone());
    retention.prune(&CancellationToken::new()).await.unwrap();
    assert_eq!(env.count("SELECT count(*) FROM idempotency_keys").await, 0);
    assert_eq!(sign_up(&http, &base, "k-1", &body).await.unwrap().0, 409);
    app.stop().await;
}

#[tokio::test]
async fn a_retry_while_the_first_is_in_its_transaction_gets_409() {
    let env = TestEnv::new().await;
    let app = env.start(Components::API).await;
    let body = user_json("max");
    // Another transaction holds the key, as the first request's does until
    // it commits.
    let mut first = env.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('create_user' || ' ' || 'k-2', 0))")
        .execute(&mut *first)
        .await
        .unwrap();
    let (status, _, answer) = sign_up(&app.http, &app.base, "k-2", &body).await.unwrap();
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["code"], "conflict");
    assert_eq!(
        env.count("SELECT count(*) FROM users").await,
        0,
        "nothing done"
    );
    first.rollback().await.unwrap();
    let (status, replayed, _) = sign_up(&app.http, &app.base, "k-2", &body).await.unwrap();
    assert_eq!((status, replayed), (200, false));
    app.stop().await;
}

#[tokio::test]
async fn a_resend_retried_with_its_key_is_accepted_again_and_sends_once() {
    let env = TestEnv::new().await;
    let app = env.start(Components::API).await;
    assert_eq!(
        app.post_json("/v1/create_user", user_json("rae")).await.0,
        200
    );
    let resend = |key: &'static str, email: &'static str| {
        let app = &app;
        async move {
            let res = app
                .http
                .post(format!("{}/v1/resend_verify_email", app.base))
                .header("Idempotency-Key", key)
                .json(&serde_json::json!({ "email": email }))
                .send()
                .await
                .unwrap();
            res.status().as_u16()
        }
    };
    assert_eq!(resend("r-1", "rae@example.com").await, 202);
    // Its retry (a lost reply): the same 202, not the 429 a second request
    // within the interval gets, and no second task.
    assert_eq!(resend("r-1", "rae@example.com").await, 202);
    assert_eq!(env.count("SELECT count(*) FROM outbox").await, 2);
    // Without the key, or with another: a second request, refused as too soon.
    assert_eq!(resend("r-2", "rae@example.com").await, 429);
    // The key with another body.
    assert_eq!(resend("r-1", "other@example.com").await, 422);
    // A sign-up's key is not a resend's, and the reverse.
    assert_eq!(
        sign_up(&app.http, &app.base, "r-1", &user_json("rae2"))
            .await
            .unwrap()
            .0,
        200,
        "keys are per endpoint"
    );
    assert_eq!(env.count("SELECT count(*) FROM outbox").await, 3);
    app.stop().await;
}
