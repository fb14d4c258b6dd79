//! Verification links: bad links refused, a link that expired before a
//! retry, a new link sent on request, and a link still working after a
//! later send.

use std::time::Duration;

use simplebank::{app::Components, queue::TaskId};

use crate::common::{SmtpProcess, TestEnv, eventually, user_json};
use crate::verify_email::{link_in, path_of};

#[tokio::test]
async fn verify_email_rejects_bad_links() {
    let env = TestEnv::new().await;
    sqlx::raw_sql(
        "INSERT INTO users (username, hashed_password, full_name, email) VALUES ('olga', 'x', 'Olga', 'olga@example.com');
         INSERT INTO verify_emails (task_id, username, email) VALUES
           (1, 'olga', 'olga@example.com'), (2, 'olga', 'olga@example.com');
         INSERT INTO verify_email_codes (verify_email_id, code_hash, expired_at)
         SELECT id, sha256(convert_to(repeat(CASE task_id WHEN 1 THEN 'a' ELSE 'b' END, 32), 'UTF8')),
                CASE task_id WHEN 1 THEN now() + interval '15 minutes' ELSE now() - interval '1 minute' END
         FROM verify_emails;",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM verify_emails ORDER BY task_id")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    let app = env.start(Components::API).await;
    let get = |q: String| {
        let path = format!("/v1/verify_email?{q}");
        let app = &app;
        async move { app.get_json(&path).await }
    };
    let (a, b) = ("a".repeat(32), "b".repeat(32));

    let (s, body) = get("email_id=abc&secret_code=short".to_owned()).await;
    assert_eq!(s, 400);
    let fields: Vec<_> = body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["email_id", "secret_code"], "{body}");
    let (s, _) = get(String::new()).await;
    assert_eq!(s, 400);
    let (s, body) = get(format!("email_id={}&secret_code={b}", ids[0])).await;
    assert_eq!(
        (s, body["code"].as_str()),
        (404, Some("not_found")),
        "wrong code: {body}"
    );
    let (s, body) = get(format!("email_id=999999&secret_code={a}")).await;
    assert_eq!(
        (s, body["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    let (s, body) = get(format!("email_id={}&secret_code={b}", ids[1])).await;
    assert_eq!(
        (s, body["code"].as_str()),
        (400, Some("failed_precondition")),
        "expired: {body}"
    );
    assert!(body["message"].as_str().unwrap().contains("expired"));
    assert_eq!(
        env.count("SELECT count(*) FROM users WHERE is_email_verified")
            .await,
        0
    );

    let (s, body) = get(format!("email_id={}&secret_code={a}", ids[0])).await;
    assert_eq!((s, body["is_verified"].as_bool()), (200, Some(true)));
    assert_eq!(
        env.count("SELECT count(*) FROM users WHERE is_email_verified")
            .await,
        1
    );
    app.stop().await;
}

#[tokio::test]
async fn a_retry_after_the_link_expired_sends_a_link_that_works() {
    let mut env = TestEnv::new().await;
    let mut smtp = SmtpProcess::down();
    env.cfg.mail.smtp_url = Some(smtp.url());
    let app = env.start(Components::ALL).await;
    assert_eq!(
        app.post_json("/v1/create_user", user_json("ivy")).await.0,
        200
    );
    // A failed attempt (the server down: the task waits, uncounted).
    eventually(Duration::from_secs(20), "a failed attempt", || async {
        let failed = env
            .count("SELECT count(*) FROM email_sends WHERE outcome = 'sender_side'")
            .await;
        (failed >= 1).then_some(())
    })
    .await;
    // The mail server stays down longer than a link lives. The worker is
    // stopped meanwhile: a run under way could otherwise have made its code
    // before the links are expired here, and send it once the server is up.
    app.stop().await;
    sqlx::query("UPDATE verify_email_codes SET expired_at = now() - interval '1 minute'")
        .execute(&env.pool)
        .await
        .unwrap();
    smtp.up();
    let app = env.start(Components::ALL).await;
    let message = eventually(Duration::from_secs(30), "the email", || async {
        smtp.messages().pop()
    })
    .await;
    let (status, body) = app.get_json(&path_of(&link_in(&message))).await;
    assert_eq!(status, 200, "the link works from its own send: {body}");
    app.stop().await;
}

#[tokio::test]
async fn a_new_link_is_sent_on_request_and_the_answer_tells_nothing() {
    let mut env = TestEnv::new().await;
    let smtp = SmtpProcess::start();
    env.cfg.mail.smtp_url = Some(smtp.url());
    env.cfg.signup.verify_email_resend_interval = Duration::from_secs(2);
    let app = env.start(Components::ALL).await;
    assert_eq!(
        app.post_json("/v1/create_user", user_json("una")).await.0,
        200
    );
    eventually(Duration::from_secs(20), "the first email", || async {
        (smtp.messages().len() == 1).then_some(())
    })
    .await;
    let resend = |email: &'static str| {
        let body = serde_json::json!({ "email": email });
        app.post_json_with_retry_after("/v1/resend_verify_email", body)
    };
    let (status, _, known) = resend("UNA@example.com").await;
    assert_eq!(status, 202);
    let (status, _, unknown) = resend("nobody@example.com").await;
    assert_eq!(
        (status, &unknown),
        (202, &known),
        "the same answer for an unknown address"
    );
    // A second request within the interval: refused, for either address.
    for email in ["una@example.com", "nobody@example.com"] {
        let (status, retry_after, body) = resend(email).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (429, Some("too_many_requests"))
        );
        assert_eq!(retry_after, Some(2));
    }
    let (status, _, body) = resend("not an address").await;
    assert_eq!(
        (status, body["details"][0]["field"].as_str()),
        (400, Some("email"))
    );

    let messages = eventually(Duration::from_secs(20), "the second email", || async {
        let m = smtp.messages();
        (m.len() == 2).then_some(m)
    })
    .await;
    let links: Vec<_> = messages.iter().map(|m| link_in(m)).collect();
    assert_ne!(links[0], links[1], "a new link");
    let (status, _) = app.get_json(&path_of(&links[1])).await;
    assert_eq!(status, 200);
    // Verified: a later request (past the interval, which grew to 4 s)
    // sends nothing, and answers the same.
    sqlx::query("UPDATE verify_email_resend_limits SET last_accepted_at = last_accepted_at - interval '1 minute'")
        .execute(&env.pool)
        .await
        .unwrap();
    let (status, _, body) = resend("una@example.com").await;
    assert_eq!((status, &body), (202, &known));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(smtp.messages().len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn a_link_already_sent_keeps_working_after_a_later_send() {
    use simplebank::users::verify_email;
    let env = TestEnv::new().await;
    sqlx::query(
        "INSERT INTO users (username, hashed_password, full_name, email)
         VALUES ('pia', 'x', 'Pia', 'pia@example.com')",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let ttl = Duration::from_secs(900);
    // Two sends of one task: the first one's email did arrive (an SMTP
    // timeout after delivery, or a crash before the ledger), then the retry.
    let first = verify_email::get_or_create_for_task(
        &env.pool,
        TaskId::from(7),
        "pia",
        "pia@example.com",
        ttl,
    )
    .await
    .unwrap();
    let second = verify_email::get_or_create_for_task(
        &env.pool,
        TaskId::from(7),
        "pia",
        "pia@example.com",
        ttl,
    )
    .await
    .unwrap();
    assert_eq!(first.id, second.id, "one row per task");
    assert_ne!(first.secret_code, second.secret_code);
    assert!(matches!(
        verify_email::verify(&env.pool, first.id, &"x".repeat(32)).await,
        Err(verify_email::VerifyError::WrongCode)
    ));
    verify_email::verify(&env.pool, first.id, &first.secret_code)
        .await
        .expect("the first link works");
    assert!(matches!(
        verify_email::verify(&env.pool, first.id, &second.secret_code).await,
        Err(verify_email::VerifyError::Used)
    ));
    assert_eq!(
        env.count("SELECT count(*) FROM users WHERE is_email_verified")
            .await,
        1
    );
}
