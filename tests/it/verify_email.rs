//! The verify-email task end to end, against a real SMTP server process.

use std::time::Duration;

use simplebank::{
    app::{Clients, Components},
    queue::TaskState,
};

use crate::common::{SmtpProcess, TestEnv, eventually, user_json, wait_state, wait_task};

/// A received message, decoded: (to, subject, plain text, html).
fn decode(raw: &str) -> (String, String, String, String) {
    let m = mail_parser::MessageParser::default()
        .parse(raw.as_bytes())
        .expect("a MIME message");
    let to = m
        .to()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .unwrap_or_default()
        .to_owned();
    let text = m.body_text(0).expect("a plain-text part").into_owned();
    let html = m.body_html(0).expect("an HTML part").into_owned();
    (to, m.subject().unwrap_or_default().to_owned(), text, html)
}

/// The verification link of a raw message (from its plain-text part).
pub(crate) fn link_in(raw: &str) -> String {
    let text = decode(raw).2;
    let start = text.find("http://").expect("a link in the message");
    text[start..].split_whitespace().next().unwrap().to_owned()
}

pub(crate) fn path_of(link: &str) -> String {
    link.split_once("/v1/")
        .map(|(_, rest)| format!("/v1/{rest}"))
        .unwrap()
}

/// `relay --once --redeliver-since`: the rows dispatched within `window`
/// enqueued again (the recovery after Redis lost data); how many.
async fn redeliver_since(env: &TestEnv, window: Duration) -> u64 {
    let relay = Clients::new(&env.cfg).unwrap().relay(&env.cfg).unwrap();
    relay.redeliver_since(window).await.unwrap()
}

#[tokio::test]
async fn sign_up_sends_one_email_whose_link_verifies_the_user() {
    let mut env = TestEnv::new().await;
    let smtp = SmtpProcess::start();
    env.cfg.mail.smtp_url = Some(smtp.url());
    env.cfg.mail.app_base_url = "http://bank.test:8080".into();
    let app = env.start(Components::ALL).await;
    assert_eq!(
        app.post_json("/v1/create_user", user_json("kate")).await.0,
        200
    );

    let message = eventually(Duration::from_secs(20), "the email", || async {
        smtp.messages().pop()
    })
    .await;
    let (to, subject, _text, html) = decode(&message);
    assert_eq!(
        (to.as_str(), subject.as_str()),
        ("kate@example.com", "Welcome to Simple Bank")
    );
    assert!(message.contains("no-reply@simplebank.local"), "{message}");
    let link = link_in(&message);
    assert!(
        html.contains(&format!("href=\"{}\"", link.replace('&', "&amp;"))),
        "{html}"
    );
    assert!(
        link.starts_with("http://bank.test:8080/v1/verify_email?email_id="),
        "{link}"
    );
    let code = link.rsplit_once("secret_code=").unwrap().1;
    assert!(code.len() >= 32, "{code}");
    // The database keeps the code's SHA-256, never the code.
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM verify_email_codes WHERE code_hash = sha256(convert_to($1, 'UTF8'))",
    )
    .bind(code)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(stored, 1);
    assert_eq!(
        env.count("SELECT count(*) FROM information_schema.columns WHERE table_name = 'verify_emails' AND column_name LIKE '%secret%'")
            .await,
        0
    );

    // The ledger records the completed task.
    eventually(Duration::from_secs(10), "the ledger row", || async {
        (env.count("SELECT count(*) FROM task_ledger").await == 1).then_some(())
    })
    .await;

    let (status, body) = app.get_json(&path_of(&link)).await;
    assert_eq!(
        (status, body["is_verified"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM users WHERE is_email_verified")
            .await,
        1
    );
    // A used link is refused.
    let (status, body) = app.get_json(&path_of(&link)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("failed_precondition")),
        "{body}"
    );
    assert_eq!(smtp.messages().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_task_delivered_twice_sends_one_email() {
    let mut env = TestEnv::new().await;
    let smtp = SmtpProcess::start();
    env.cfg.mail.smtp_url = Some(smtp.url());
    let app = env.start(Components::ALL).await;
    assert_eq!(
        app.post_json("/v1/create_user", user_json("liam")).await.0,
        200
    );
    eventually(Duration::from_secs(20), "the ledger row", || async {
        (env.count("SELECT count(*) FROM task_ledger").await == 1).then_some(())
    })
    .await;
    let queue = env.queue();
    let id = env.only_outbox_id().await;
    // Redis forgets the task (as after a restore from an old backup), and the
    // recovery tool delivers it again.
    env.forget_in_redis("critical", id).await;
    assert_eq!(redeliver_since(&env, Duration::from_secs(900)).await, 1);
    wait_state(&queue, "critical", id, TaskState::Completed).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        smtp.messages().len(),
        1,
        "the ledger skipped the second delivery"
    );
    assert_eq!(env.count("SELECT count(*) FROM verify_emails").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn smtp_down_then_up_the_email_arrives_without_burning_attempts() {
    let mut env = TestEnv::new().await;
    let mut smtp = SmtpProcess::down();
    env.cfg.mail.smtp_url = Some(smtp.url());
    let app = env.start(Components::ALL).await;
    assert_eq!(
        app.post_json("/v1/create_user", user_json("mia")).await.0,
        200
    );
    let queue = env.queue();
    let id = env.only_outbox_id().await;
    // The server is down: the worker's breaker holds the queue back, and the
    // task waits without an attempt counted.
    let held = held_back_after_sender_side_sends(&env, &queue, id, "connect").await;
    assert_eq!(held.retried, 0, "{held:?}");

    smtp.up();
    let message = eventually(
        Duration::from_secs(30),
        "the email once the server is up",
        || async { smtp.messages().pop() },
    )
    .await;
    assert_eq!(decode(&message).0, "mia@example.com");
    let done = wait_state(&queue, "critical", id, TaskState::Completed).await;
    assert_eq!(done.retried, 0, "{done:?}");
    // Every attempt used the same verification row; the code of the send
    // that went through is the one that works.
    let vid: i64 = sqlx::query_scalar("SELECT id FROM verify_emails")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let link = link_in(&message);
    assert!(link.contains(&format!("email_id={vid}&")), "{link}");
    assert_eq!(app.get_json(&path_of(&link)).await.0, 200);
    app.stop().await;
}

/// Waits until task `id`'s sends failed at least 3 times for a sender-side
/// reason naming `phase`, and a worker's breaker holds its queue back; the
/// task must be waiting meanwhile, never archived. Returns the task.
async fn held_back_after_sender_side_sends(
    env: &TestEnv,
    queue: &simplebank::queue::Broker,
    id: simplebank::queue::TaskId,
    phase: &str,
) -> simplebank::queue::TaskInfo {
    eventually(
        Duration::from_secs(20),
        "3 sender-side failures and the queue held back",
        || async {
            let failures: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM email_sends WHERE outcome = 'sender_side' AND detail LIKE '%' || $1 || '%'",
            )
            .bind(phase)
            .fetch_one(&env.pool)
            .await
            .unwrap();
            let held = queue.stats("critical").await.unwrap().held_back;
            (failures >= 3 && held).then_some(())
        },
    )
    .await;
    let task = queue.task("critical", id).await.unwrap().unwrap();
    assert!(
        matches!(task.state, TaskState::Pending | TaskState::Active),
        "waiting, not retried or archived: {task:?}"
    );
    task
}

#[tokio::test]
async fn a_refused_recipient_is_archived_at_once_with_the_reason() {
    let mut env = TestEnv::new().await;
    let smtp = SmtpProcess::start();
    env.cfg.mail.smtp_url = Some(smtp.url());
    let app = env.start(Components::ALL).await;
    // The test SMTP server answers 550 for this mailbox.
    assert_eq!(
        app.post_json("/v1/create_user", user_json("refused_ann"))
            .await
            .0,
        200
    );
    let id = env.only_outbox_id().await;
    let info = wait_state(&env.queue(), "critical", id, TaskState::Archived).await;
    assert_eq!(info.retried, 0, "a permanent refusal is not retried");
    let error = info.last_error.unwrap();
    assert!(
        error.contains("550") && error.contains("RCPT TO"),
        "{error}"
    );
    // Each cause once on the line, not its text three times.
    assert_eq!(error.matches("mailbox unavailable").count(), 1, "{error}");
    assert!(smtp.messages().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_refused_sender_delays_the_email_and_archives_nothing() {
    let mut env = TestEnv::new().await;
    let smtp = SmtpProcess::start();
    env.cfg.mail.smtp_url = Some(smtp.url());
    // The provider paused the sending account: 554 at MAIL FROM, a 5xx that
    // is about the sender, not about this recipient.
    smtp.refuse_sender(true);
    let app = env.start(Components::ALL).await;
    assert_eq!(
        app.post_json("/v1/create_user", user_json("sam")).await.0,
        200
    );
    let id = env.only_outbox_id().await;
    let q = env.queue();
    let held = held_back_after_sender_side_sends(&env, &q, id, "MAIL FROM").await;
    assert_eq!(held.retried, 0, "no attempt counted: {held:?}");
    let detail: String = sqlx::query_scalar("SELECT detail FROM email_sends ORDER BY id LIMIT 1")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(detail.contains("554"), "{detail}");
    // The account resumes: a probe finds it, and the breaker closes.
    smtp.refuse_sender(false);
    let done = wait_state(&q, "critical", id, TaskState::Completed).await;
    assert_eq!(done.retried, 0, "{done:?}");
    assert_eq!(smtp.messages().len(), 1);
    eventually(Duration::from_secs(10), "the breaker closed", || async {
        (!q.stats("critical").await.unwrap().held_back).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_refused_login_delays_the_email_and_archives_nothing() {
    let mut env = TestEnv::new().await;
    let smtp = SmtpProcess::start();
    env.cfg.mail.smtp_url = Some(smtp.url_with_login());
    // The sender's password expired: 535 to AUTH.
    smtp.refuse_auth(true);
    let app = env.start(Components::ALL).await;
    assert_eq!(
        app.post_json("/v1/create_user", user_json("ada")).await.0,
        200
    );
    let id = env.only_outbox_id().await;
    let q = env.queue();
    let held = held_back_after_sender_side_sends(&env, &q, id, "AUTH").await;
    assert_eq!(held.retried, 0, "{held:?}");
    assert!(smtp.messages().is_empty());
    smtp.refuse_auth(false);
    let done = wait_state(&q, "critical", id, TaskState::Completed).await;
    assert_eq!(done.retried, 0, "{done:?}");
    assert_eq!(smtp.messages().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_late_final_reply_within_its_limit_is_one_email() {
    let mut env = TestEnv::new().await;
    let smtp = SmtpProcess::start();
    env.cfg.mail.smtp_url = Some(smtp.url());
    // Later than the whole exchange before the dot may take (2 s), within
    // the final reply's own limit.
    smtp.delay_final_reply(Some(Duration::from_secs(3)));
    env.cfg.mail.smtp_final_reply_timeout = Duration::from_secs(20);
    let app = env.start(Components::ALL).await;
    assert_eq!(
        app.post_json("/v1/create_user", user_json("leo")).await.0,
        200
    );
    let id = env.only_outbox_id().await;
    let done = wait_state(&env.queue(), "critical", id, TaskState::Completed).await;
    assert_eq!(done.retried, 0, "{done:?}");
    assert_eq!(smtp.messages().len(), 1);
    let outcomes: Vec<String> = sqlx::query_scalar("SELECT outcome FROM email_sends ORDER BY id")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(outcomes, ["sent"]);
    app.stop().await;
}

#[tokio::test]
async fn a_final_reply_past_its_limit_is_not_sent_again_soon() {
    let mut env = TestEnv::new().await;
    let smtp = SmtpProcess::start();
    env.cfg.mail.smtp_url = Some(smtp.url());
    // The server stores the message and answers after the limit: the
    // outcome is unknown, and the next attempt waits the long delay.
    smtp.delay_final_reply(Some(Duration::from_secs(4)));
    env.cfg.mail.smtp_final_reply_timeout = Duration::from_secs(1);
    let app = env.start(Components::ALL).await;
    assert_eq!(
        app.post_json("/v1/create_user", user_json("una")).await.0,
        200
    );
    let id = env.only_outbox_id().await;
    let q = env.queue();
    let waiting = wait_state(&q, "critical", id, TaskState::Retry).await;
    let due_in = |_| async {
        let redis = env.cfg.redis.connection().pool().unwrap();
        let retry_set = format!("{}:{{critical}}:retry", env.cfg.redis.key_prefix);
        let due_ms: f64 = fred::prelude::SortedSetsInterface::zscore(&redis, retry_set, id.get())
            .await
            .unwrap();
        let due = chrono::DateTime::from_timestamp_millis(due_ms as i64).unwrap();
        due - chrono::Utc::now()
    };
    let wait = due_in(()).await;
    assert!(
        wait > chrono::Duration::minutes(55),
        "the next attempt waits SMTP_OUTCOME_UNKNOWN_DELAY (1 h), not the backoff: {wait}"
    );
    assert!(waiting.last_error.unwrap().contains("outcome unknown"));
    let (outcome, detail): (String, String) =
        sqlx::query_as("SELECT outcome, detail FROM email_sends")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(outcome, "unknown", "{detail}");
    // The server's reply comes meanwhile; the copy it stored is the only one.
    eventually(Duration::from_secs(10), "the stored copy", || async {
        (smtp.messages().len() == 1).then_some(())
    })
    .await;
    // Run now, as an operator might: the run sees the unknown send and
    // waits again rather than send a second copy.
    q.run_now("critical", id, "test").await.unwrap();
    let again = wait_task(
        &q,
        "critical",
        id,
        Duration::from_secs(20),
        "a second attempt that waits",
        |t| t.retried >= 2,
    )
    .await;
    assert_eq!(again.state, TaskState::Retry, "{again:?}");
    assert!(due_in(()).await > chrono::Duration::minutes(55));
    assert_eq!(smtp.messages().len(), 1, "no second copy");
    let outcomes: i64 = env.count("SELECT count(*) FROM email_sends").await;
    assert_eq!(outcomes, 1, "the second attempt sent nothing");
    app.stop().await;
}

#[tokio::test]
async fn a_user_verified_meanwhile_gets_no_more_email() {
    let mut env = TestEnv::new().await;
    let smtp = SmtpProcess::start();
    env.cfg.mail.smtp_url = Some(smtp.url());
    sqlx::query(
        "INSERT INTO users (username, hashed_password, full_name, email, is_email_verified)
         VALUES ('vera', 'x', 'Vera', 'vera@example.com', true)",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO outbox (kind, queue, payload, max_retry, timeout_ms)
         VALUES ('task:send_verify_email', 'critical', '{\"username\":\"vera\"}', 10, 60000)",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let app = env.start(Components::RELAY | Components::WORKER).await;
    let id = env.only_outbox_id().await;
    wait_state(&env.queue(), "critical", id, TaskState::Completed).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(smtp.messages().is_empty(), "no email to a verified address");
    assert_eq!(env.count("SELECT count(*) FROM verify_emails").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_task_for_a_missing_user_is_archived_without_retries() {
    let env = TestEnv::new().await;
    sqlx::query(
        "INSERT INTO outbox (kind, queue, payload, max_retry, timeout_ms)
         VALUES ('task:send_verify_email', 'critical', '{\"username\":\"ghost\"}', 10, 5000)",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let app = env.start(Components::RELAY | Components::WORKER).await;
    let queue = env.queue();
    let id = env.only_outbox_id().await;
    let info = wait_state(&queue, "critical", id, TaskState::Archived).await;
    assert_eq!(info.retried, 0);
    assert!(info.last_error.unwrap().contains("does not exist"));
    app.stop().await;
}

#[tokio::test]
async fn the_file_mailer_writes_the_message_and_the_link_works() {
    let env = TestEnv::new().await;
    let app = env.start(Components::ALL).await;
    assert_eq!(
        app.post_json("/v1/create_user", user_json("noah")).await.0,
        200
    );
    let dir = env.cfg.mail.dir.clone();
    let message = eventually(Duration::from_secs(20), "the .eml file", || async {
        let eml = std::fs::read_dir(&dir)
            .ok()?
            .filter_map(|e| Some(e.ok()?.path()))
            .find(|p| p.extension().is_some_and(|x| x == "eml"))?;
        std::fs::read_to_string(eml).ok()
    })
    .await;
    assert_eq!(decode(&message).0, "noah@example.com");
    let (status, _) = app.get_json(&path_of(&link_in(&message))).await;
    assert_eq!(status, 200);
    let _ = std::fs::remove_dir_all(&dir);
    app.stop().await;
}

/// The Message-ID of a raw message.
fn message_id(raw: &str) -> String {
    mail_parser::MessageParser::default()
        .parse(raw.as_bytes())
        .expect("a MIME message")
        .message_id()
        .expect("a Message-ID")
        .to_owned()
}

#[tokio::test]
async fn every_send_of_one_task_carries_one_message_id() {
    let mut env = TestEnv::new().await;
    let smtp = SmtpProcess::start();
    env.cfg.mail.smtp_url = Some(smtp.url());
    let app = env.start(Components::ALL).await;
    assert_eq!(
        app.post_json("/v1/create_user", user_json("milo")).await.0,
        200
    );
    let id = env.only_outbox_id().await;
    // The first send, its ledger record (which follows the send) and its
    // acknowledgement in Redis (which follows the record): a redelivery
    // before that would find the task still there and change nothing.
    let q = env.queue();
    eventually(
        Duration::from_secs(20),
        "the first email, settled",
        || async {
            let recorded = env.count("SELECT count(*) FROM task_ledger").await == 1;
            let settled = match q.task("critical", id).await.unwrap() {
                Some(t) => t.state == TaskState::Completed,
                None => true,
            };
            (smtp.messages().len() == 1 && recorded && settled).then_some(())
        },
    )
    .await;
    // The worker died after the server took the message and before it
    // recorded the reply: no ledger row, and a send log row that says
    // "handed over, no outcome". Once SMTP_OUTCOME_UNKNOWN_DELAY has passed
    // (1 h: the row is made 2 h old), the task is sent again.
    sqlx::query("DELETE FROM task_ledger")
        .execute(&env.pool)
        .await
        .unwrap();
    // Its tombstone in Redis gone too (a Redis restart without its file).
    env.forget_in_redis("critical", id).await;
    sqlx::query(
        "UPDATE email_sends SET outcome = NULL, handed_over_at = handed_over_at - interval '2 hours'",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    assert_eq!(redeliver_since(&env, Duration::from_secs(3600)).await, 1);
    let messages = eventually(Duration::from_secs(20), "the second email", || async {
        let messages = smtp.messages();
        (messages.len() == 2).then_some(messages)
    })
    .await;
    let ids: Vec<String> = messages.iter().map(|m| message_id(m)).collect();
    assert_eq!(ids[0], ids[1], "one Message-ID for both copies");
    // Stable per task and the sender's domain, as RFC 5322 asks.
    // The task's id and creation time, and the sender's domain.
    let created: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT created_at FROM outbox WHERE id = $1")
            .bind(id.get())
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        ids[0],
        format!(
            "verify-email.{id}.{}@simplebank.local",
            created.timestamp_millis()
        )
    );
    app.stop().await;
}

#[tokio::test]
async fn a_send_recorded_as_sent_is_not_repeated_when_its_ledger_row_is_lost() {
    let mut env = TestEnv::new().await;
    let smtp = SmtpProcess::start();
    env.cfg.mail.smtp_url = Some(smtp.url());
    let app = env.start(Components::ALL).await;
    assert_eq!(
        app.post_json("/v1/create_user", user_json("nia")).await.0,
        200
    );
    let id = env.only_outbox_id().await;
    let q = env.queue();
    wait_state(&q, "critical", id, TaskState::Completed).await;
    eventually(Duration::from_secs(20), "the ledger row", || async {
        (env.count("SELECT count(*) FROM task_ledger").await == 1).then_some(())
    })
    .await;
    // The ledger row lost (and the tombstone in Redis with it), the send
    // log still saying "sent": a redelivery runs the task, which sends
    // nothing.
    sqlx::query("DELETE FROM task_ledger")
        .execute(&env.pool)
        .await
        .unwrap();
    env.forget_in_redis("critical", id).await;
    assert_eq!(redeliver_since(&env, Duration::from_secs(3600)).await, 1);
    // Run again, and recorded in the ledger again.
    eventually(Duration::from_secs(20), "the second run", || async {
        (env.count("SELECT count(*) FROM task_ledger").await == 1).then_some(())
    })
    .await;
    assert_eq!(smtp.messages().len(), 1, "one email");
    assert_eq!(env.count("SELECT count(*) FROM email_sends").await, 1);
    app.stop().await;
}
