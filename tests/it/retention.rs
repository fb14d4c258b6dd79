//! Every table has an end: each prune deletes what is past its retention,
//! and nothing younger or still needed. Rows are made old by moving their
//! times back, so the shipped settings are the ones tested.

use std::time::Duration;

use simplebank::{
    app::Components,
    retention::{Retention, Table},
};
use tokio_util::sync::CancellationToken;

use crate::common::{TestEnv, eventually, user_json};

/// The task of `username`'s sign-up, for the tables keyed by task.
const TASK_OF: &str = "(SELECT id FROM outbox WHERE payload->>'username' = $1)";

/// The rows of each table that belong to `username`: ledger, send log,
/// codes, verification rows, account.
async fn rows_of(env: &TestEnv, username: &str) -> Vec<i64> {
    let queries = [
        format!("SELECT count(*) FROM task_ledger WHERE task_id IN {TASK_OF}"),
        format!("SELECT count(*) FROM email_sends WHERE task_id IN {TASK_OF}"),
        "SELECT count(*) FROM verify_email_codes c JOIN verify_emails v ON v.id = c.verify_email_id WHERE v.username = $1".to_owned(),
        "SELECT count(*) FROM verify_emails WHERE username = $1".to_owned(),
        "SELECT count(*) FROM users WHERE username = $1".to_owned(),
    ];
    let mut rows = Vec::new();
    for sql in queries {
        let n: i64 = sqlx::query_scalar(&sql)
            .bind(username)
            .fetch_one(&env.pool)
            .await
            .unwrap();
        rows.push(n);
    }
    rows
}

/// Moves every time of `username`'s rows back by `days`.
async fn age(env: &TestEnv, username: &str, days: i32) {
    for sql in [
        format!("UPDATE task_ledger SET completed_at = completed_at - make_interval(days => $2) WHERE task_id IN {TASK_OF}"),
        format!("UPDATE email_sends SET started_at = started_at - make_interval(days => $2) WHERE task_id IN {TASK_OF}"),
        "UPDATE verify_email_codes c SET expired_at = expired_at - make_interval(days => $2) FROM verify_emails v WHERE v.id = c.verify_email_id AND v.username = $1".to_owned(),
        "UPDATE verify_emails SET created_at = created_at - make_interval(days => $2) WHERE username = $1".to_owned(),
        "UPDATE users SET created_at = created_at - make_interval(days => $2) WHERE username = $1".to_owned(),
    ] {
        sqlx::query(&sql)
            .bind(username)
            .bind(days)
            .execute(&env.pool)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn every_table_is_pruned_at_its_retention_and_not_before() {
    let env = TestEnv::new().await;
    let app = env.start(Components::ALL).await;
    for name in ["done", "fresh", "stale", "recent"] {
        assert_eq!(
            app.post_json("/v1/create_user", user_json(name)).await.0,
            200
        );
    }
    eventually(
        Duration::from_secs(20),
        "four emails sent and recorded",
        || async {
            let ledger = env.count("SELECT count(*) FROM task_ledger").await;
            let sent = env
                .count("SELECT count(*) FROM email_sends WHERE outcome = 'sent'")
                .await;
            (ledger == 4 && sent == 4).then_some(())
        },
    )
    .await;
    app.stop().await;
    // "done" verified its address 8 days ago; "fresh" did just now; "stale"
    // signed up 8 days ago and never verified; "recent" 6 days ago.
    for verified in ["done", "fresh"] {
        sqlx::query("UPDATE users SET is_email_verified = true WHERE username = $1")
            .bind(verified)
            .execute(&env.pool)
            .await
            .unwrap();
        sqlx::query("UPDATE verify_emails SET is_used = true WHERE username = $1")
            .bind(verified)
            .execute(&env.pool)
            .await
            .unwrap();
    }
    age(&env, "done", 8).await;
    age(&env, "stale", 8).await;
    age(&env, "recent", 6).await;
    let before = [
        rows_of(&env, "done").await,
        rows_of(&env, "fresh").await,
        rows_of(&env, "recent").await,
    ];
    assert_eq!(
        before,
        [[1, 1, 1, 1, 1]; 3].map(Vec::from),
        "each sign-up's rows, before"
    );

    // The shipped retentions: 7 days each.
    let retention = Retention::new(env.pool.clone(), env.cfg.retention.clone());
    let pruned = retention.prune(&CancellationToken::new()).await.unwrap();
    let deleted = |t: Table| pruned.iter().find(|(p, _)| *p == t).map(|(_, n)| *n);
    // "done" and "stale" lose their ledger row, send log row and code; only
    // "done"'s verification row is deleted by its own rule (used, codes
    // expired); "stale"'s goes with its account.
    assert_eq!(deleted(Table::Ledger), Some(2), "{pruned:?}");
    assert_eq!(deleted(Table::SendLog), Some(2), "{pruned:?}");
    assert_eq!(deleted(Table::Codes), Some(2), "{pruned:?}");
    assert_eq!(deleted(Table::VerifyEmails), Some(1), "{pruned:?}");
    assert_eq!(deleted(Table::UnverifiedAccounts), Some(1), "{pruned:?}");
    // The verified account stays, with nothing else; younger rows stay whole.
    assert_eq!(rows_of(&env, "done").await, vec![0, 0, 0, 0, 1]);
    assert_eq!(rows_of(&env, "stale").await, vec![0, 0, 0, 0, 0]);
    assert_eq!(rows_of(&env, "fresh").await, vec![1, 1, 1, 1, 1]);
    assert_eq!(rows_of(&env, "recent").await, vec![1, 1, 1, 1, 1]);
    // A second pass finds nothing more.
    let again = retention.prune(&CancellationToken::new()).await.unwrap();
    assert!(again.iter().all(|(_, n)| *n == 0), "{again:?}");
}

#[tokio::test]
async fn an_expired_unverified_account_frees_its_username_and_address() {
    let env = TestEnv::new().await;
    let app = env.start(Components::API).await;
    assert_eq!(
        app.post_json("/v1/create_user", user_json("zed")).await.0,
        200
    );
    // Taken while the account lives.
    assert_eq!(
        app.post_json("/v1/create_user", user_json("zed")).await.0,
        409
    );
    sqlx::query("UPDATE users SET created_at = created_at - interval '8 days'")
        .execute(&env.pool)
        .await
        .unwrap();
    let retention = Retention::new(env.pool.clone(), env.cfg.retention.clone());
    retention.prune(&CancellationToken::new()).await.unwrap();
    assert_eq!(env.count("SELECT count(*) FROM users").await, 0);
    // The same username and address sign up again.
    assert_eq!(
        app.post_json("/v1/create_user", user_json("zed")).await.0,
        200
    );
    app.stop().await;
}

#[tokio::test]
async fn zero_keeps_unverified_accounts() {
    let mut env = TestEnv::new().await;
    env.cfg.retention.unverified_account_ttl = Duration::ZERO;
    let app = env.start(Components::API).await;
    assert_eq!(
        app.post_json("/v1/create_user", user_json("kim")).await.0,
        200
    );
    app.stop().await;
    sqlx::query("UPDATE users SET created_at = created_at - interval '800 days'")
        .execute(&env.pool)
        .await
        .unwrap();
    let retention = Retention::new(env.pool.clone(), env.cfg.retention.clone());
    retention.prune(&CancellationToken::new()).await.unwrap();
    assert_eq!(env.count("SELECT count(*) FROM users").await, 1);
}

#[tokio::test]
async fn an_account_being_verified_is_not_expired_under_it() {
    let env = TestEnv::new().await;
    let app = env.start(Components::ALL).await;
    assert_eq!(
        app.post_json("/v1/create_user", user_json("ida")).await.0,
        200
    );
    eventually(Duration::from_secs(20), "the link sent", || async {
        (env.count("SELECT count(*) FROM verify_emails").await == 1).then_some(())
    })
    .await;
    app.stop().await;
    age(&env, "ida", 8).await;
    // A link being used now: its verification row is locked, as the
    // verification locks it before it marks the user.
    let mut click = env.pool.begin().await.unwrap();
    sqlx::query("SELECT is_used FROM verify_emails WHERE username = 'ida' FOR UPDATE")
        .execute(&mut *click)
        .await
        .unwrap();
    let retention = Retention::new(env.pool.clone(), env.cfg.retention.clone());
    // The pass neither waits for it nor deletes the account under it.
    let pass = tokio::time::timeout(
        Duration::from_secs(10),
        retention.prune(&CancellationToken::new()),
    )
    .await
    .expect("the pass does not wait on the click")
    .unwrap();
    let expired = pass
        .iter()
        .find(|(t, _)| *t == Table::UnverifiedAccounts)
        .map(|(_, n)| *n);
    assert_eq!(expired, Some(0), "{pass:?}");
    assert_eq!(rows_of(&env, "ida").await[4], 1);
    // Once the click is over (here: it verified nothing), the next pass
    // expires it.
    click.rollback().await.unwrap();
    retention.prune(&CancellationToken::new()).await.unwrap();
    assert_eq!(rows_of(&env, "ida").await, vec![0, 0, 0, 0, 0]);
}
