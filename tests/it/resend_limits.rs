//! The limits on sending new verification links: per mailbox (at most
//! VERIFY_EMAIL_RESEND_MAX a window, at a growing interval, spellings of
//! one mailbox counted together, the same answers whether or not an account
//! has the address) and per client address (HTTP_SIGNUP_RATE_LIMIT).
//! Days are compressed by moving the limits' times back, as the retention
//! tests do: the shipped settings, no waiting.

use std::time::Duration;

use simplebank::app::Components;

use crate::common::*;

/// Moves every mailbox's window and last request back by `by` (a Postgres
/// interval), as if that much time had passed.
async fn age_limits(env: &TestEnv, by: &str) {
    sqlx::query(
        "UPDATE verify_email_resend_limits
         SET window_started_at = window_started_at - $1::interval,
             last_accepted_at = last_accepted_at - $1::interval",
    )
    .bind(by)
    .execute(&env.pool)
    .await
    .unwrap();
}

/// A request for a new link to `email`: its status and Retry-After (s).
async fn resend(app: &TestApp, email: &str) -> (u16, Option<u64>) {
    let body = serde_json::json!({ "email": email });
    let (status, retry_after, _) = app
        .post_json_with_retry_after("/v1/resend_verify_email", body)
        .await;
    (status, retry_after)
}

/// A mail-bomb against one mailbox: 100 requests for a new link over four
/// compressed days (one every 30 minutes for 12 hours, then a 12-hour
/// night), in four spellings of one Gmail address (case, a dot moved, a
/// `+tag`, googlemail.com). With the shipped limits (5 a day, from 60 s
/// apart doubling), exactly five a day are accepted, whichever spelling
/// asks; the mailbox gets the sign-up's email and one per accepted request
/// in the account's own spelling: never more than 1 + 4 x 5.
#[tokio::test]
async fn one_mailbox_gets_at_most_the_cap_from_100_requests_over_four_days() {
    let mut env = TestEnv::new().await;
    let smtp = SmtpProcess::start();
    env.cfg.mail.smtp_url = Some(smtp.url());
    let app = env.start(Components::ALL).await;
    // The plain address: its sign-up's email is not counted.
    let account = "victimname@gmail.com";
    let mut user = user_json("victim");
    user["email"] = account.into();
    assert_eq!(app.post_json("/v1/create_user", user).await.0, 200);

    let spellings = [
        account.to_owned(),
        "VictimName@Gmail.com".to_owned(),
        "victim.name+bomb@gmail.com".to_owned(),
        "v.ictimname@googlemail.com".to_owned(),
    ];
    let (mut accepted, mut to_account) = (0, 0);
    for day in 0..4 {
        for j in 0..25 {
            if j > 0 {
                age_limits(&env, "30 minutes").await;
            }
            let email = &spellings[(day * 25 + j) % spellings.len()];
            let (status, _) = resend(&app, email).await;
            match status {
                202 => {
                    accepted += 1;
                    if email.eq_ignore_ascii_case(account) {
                        to_account += 1;
                    }
                }
                429 => {}
                other => panic!("day {day}, request {j}: {other}"),
            }
            assert!(
                j >= 5 || status == 202,
                "day {day}: the first five are accepted, request {j} was not"
            );
        }
        age_limits(&env, "12 hours").await;
    }
    assert_eq!(accepted, 4 * 5, "five accepted a day, in any spelling");
    // Each accepted request in the account's spelling is a task and an
    // email; other spellings have no account (they count, and send nothing).
    let expected = 1 + to_account;
    eventually(Duration::from_secs(30), "every task run", || async {
        let runs = env.count("SELECT count(*) FROM task_ledger").await;
        (runs == expected as i64).then_some(())
    })
    .await;
    let emails = smtp.messages().len();
    assert_eq!(
        emails, expected,
        "one email per accepted request, and the sign-up's"
    );
    assert!(emails <= 1 + 4 * 5, "{emails} emails to one mailbox");
    app.stop().await;
}

/// The interval grows (60 s, then 120 s, ...) and the window's cap holds
/// until the window ends, for an address with an account and for one
/// without, with the same statuses and the same Retry-After: the limit
/// tells nobody which addresses have accounts.
#[tokio::test]
async fn the_interval_grows_and_the_answers_are_the_same_with_or_without_an_account() {
    let mut env = TestEnv::new().await;
    env.cfg.signup.verify_email_resend_max = 3;
    let app = env.start(Components::API).await;
    assert_eq!(
        app.post_json("/v1/create_user", user_json("known")).await.0,
        200
    );
    let mut answers = Vec::new();
    for email in ["known@example.com", "nobody@example.com"] {
        sqlx::query("DELETE FROM verify_email_resend_limits")
            .execute(&env.pool)
            .await
            .unwrap();
        let mut seen = Vec::new();
        // Accepted, then refused until 60 s passed.
        seen.push(resend(&app, email).await);
        seen.push(resend(&app, &email.to_uppercase()).await);
        age_limits(&env, "60 seconds").await;
        // Accepted, then refused until 120 s passed.
        seen.push(resend(&app, email).await);
        seen.push(resend(&app, email).await);
        age_limits(&env, "120 seconds").await;
        // The third: the cap. Refused until the window of 24 h ends.
        seen.push(resend(&app, email).await);
        seen.push(resend(&app, email).await);
        age_limits(&env, "2 hours").await;
        seen.push(resend(&app, email).await);
        age_limits(&env, "22 hours").await;
        // A new window.
        seen.push(resend(&app, email).await);
        answers.push(seen);
    }
    let window = 24 * 3600 - 180;
    let expected = [
        (202, None),
        (429, Some(60)),
        (202, None),
        (429, Some(120)),
        (202, None),
        (429, Some(window)),
        (429, Some(window - 7200)),
        (202, None),
    ];
    for (answers, whose) in answers.iter().zip(["with an account", "without one"]) {
        assert_eq!(answers.len(), expected.len());
        for ((status, wait), (want_status, want_wait)) in answers.iter().zip(expected) {
            assert_eq!(*status, want_status, "an address {whose}: {answers:?}");
            // Counted from the window's first request: the seconds this
            // test took come off (a few at most, on a loaded machine).
            let near = |w: u64, want: u64| w <= want && w + 10 >= want;
            assert!(
                match (wait, want_wait) {
                    (Some(w), Some(want)) => near(*w, want),
                    (None, None) => true,
                    _ => false,
                },
                "an address {whose}: {answers:?}"
            );
        }
    }
    app.stop().await;
}

/// A sign-up with another spelling of a mailbox (a `+tag`, Gmail's dots)
/// is one more email to it: counted with its links, so such sign-ups
/// cannot flood a mailbox either. The plain address's own sign-up is not
/// counted (it can have one account at a time).
#[tokio::test]
async fn sign_ups_with_other_spellings_of_a_mailbox_count_with_its_links() {
    let env = TestEnv::new().await;
    let app = env.start(Components::API).await;
    let sign_up = |name: String, email: String| {
        let mut user = user_json(&name);
        user["email"] = email.into();
        let app = &app;
        async move {
            let (status, retry_after, _) = app
                .post_json_with_retry_after("/v1/create_user", user)
                .await;
            (status, retry_after)
        }
    };
    for i in 0..5 {
        let (status, _) = sign_up(format!("tag{i}"), format!("flooded+{i}@gmail.com")).await;
        assert_eq!(status, 200, "sign-up {i}");
        age_limits(&env, "1 hour").await;
    }
    let (status, retry_after) = sign_up("tag5".into(), "f.looded+5@gmail.com".into()).await;
    assert_eq!(status, 429, "the sixth email to the mailbox in a day");
    assert!(retry_after.is_some());
    assert_eq!(
        env.count("SELECT count(*) FROM users").await,
        5,
        "the refused sign-up made nothing"
    );
    // The plain address signs up; a new link to it waits with the rest.
    let (status, _) = sign_up("plain".into(), "flooded@gmail.com".into()).await;
    assert_eq!(status, 200);
    assert_eq!(resend(&app, "flooded@gmail.com").await.0, 429);
    app.stop().await;
}

/// One client address may make HTTP_SIGNUP_RATE_LIMIT sign-ups and link
/// requests together an hour, after a burst of HTTP_SIGNUP_RATE_BURST;
/// other routes are not counted in it.
#[tokio::test]
async fn sign_ups_and_link_requests_from_one_client_have_a_rate_of_their_own() {
    let mut env = TestEnv::new().await;
    env.cfg.http.signup_rate_limit = 10;
    env.cfg.http.signup_rate_burst = 3;
    let app = env.start(Components::API).await;
    assert_eq!(
        app.post_json("/v1/create_user", user_json("rate1")).await.0,
        200
    );
    assert_eq!(resend(&app, "rate1@example.com").await.0, 202);
    assert_eq!(
        app.post_json("/v1/create_user", user_json("rate2")).await.0,
        200
    );
    let (status, body) = app.post_json("/v1/create_user", user_json("rate3")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("too_many_requests"))
    );
    let (status, retry_after) = resend(&app, "other@example.com").await;
    assert_eq!(status, 429);
    // 10 an hour: the next one in about 6 minutes.
    let retry_after = retry_after.unwrap();
    assert!(
        (300..=360).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    // Other routes keep their own limits.
    let link = format!(
        "/v1/verify_email?email_id=999&secret_code={}",
        "x".repeat(32)
    );
    assert_eq!(app.get_json(&link).await.0, 404);
    assert_eq!(app.get_json("/healthz").await.0, 200);
    assert_eq!(
        env.count("SELECT count(*) FROM users").await,
        2,
        "the refused sign-up made nothing"
    );
    app.stop().await;
}
