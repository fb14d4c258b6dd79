//! The relay's sessions bound themselves: a relay host that vanishes mid-batch
//! without closing its connection (no FIN: power loss, a partition) frees its
//! rows within RELAY_SESSION_TIMEOUT, and another relay forwards them.

use std::time::{Duration, Instant};

use simplebank::{app::Clients, outbox::relay::RelayError};

use crate::common::{CuttableLink, TestEnv, eventually, postgres_addr, redis_addr};
use crate::relay::{insert_rows, undispatched};

/// The vanishing relay's session timeout, short for the test.
const SESSION_TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::test]
async fn a_relay_that_vanishes_mid_batch_frees_its_rows_for_another() {
    let env = TestEnv::new().await;
    let pg_link = CuttableLink::to(postgres_addr(&env.db_url)).await;
    let redis_link = CuttableLink::to(redis_addr(&env.cfg.redis.url)).await;

    // Relay A reaches both servers through links. Its Redis never answers
    // (the enqueue runs, its reply is dropped), so A sits in its batch with
    // the rows claimed, as a host does that vanished mid-batch. (Built
    // directly, so the start-up check that would want RELAY_SESSION_TIMEOUT
    // longer than this Redis wait is not made: the wait stands for a host
    // that is gone, not for a slow Redis.)
    let mut cfg_a = env.cfg.clone();
    cfg_a.db.url = Some(pg_link.postgres_url(&env.db_url));
    cfg_a.redis.url = redis_link.redis_url();
    cfg_a.redis.command_timeout = Duration::from_secs(60);
    cfg_a.redis.pool_size = 1;
    cfg_a.relay.session_timeout = SESSION_TIMEOUT;
    let relay_a = Clients::new(&cfg_a).unwrap().relay(&cfg_a).unwrap();
    // One batch while all is well: A's one Redis connection is up and the
    // script loaded, so the enqueue below runs in Redis.
    insert_rows(&env, 1).await;
    assert_eq!(relay_a.forward_batch().await.unwrap().forwarded, 1);
    insert_rows(&env, 50).await;
    redis_link.swallow_replies();
    let started = Instant::now();
    let a = tokio::spawn(async move {
        let result = relay_a.forward_batch().await;
        (result, started.elapsed())
    });
    let q = env.queue();
    eventually(Duration::from_secs(20), "A's batch in Redis", || async {
        (q.stats("default").await.unwrap().pending == 51).then_some(())
    })
    .await;
    // Now A's host is gone: nothing passes, nothing is closed.
    pg_link.blackhole();
    let vanished = Instant::now();

    // Relay B skips the rows A holds locked until Postgres ends A's
    // transaction; then it forwards them (a no-op enqueue: they are in Redis).
    let relay_b = Clients::new(&env.cfg).unwrap().relay(&env.cfg).unwrap();
    let freed_after = eventually(Duration::from_secs(30), "B forwards A's rows", || async {
        relay_b.forward_batch().await.unwrap();
        (undispatched(&env).await == 0).then(|| vanished.elapsed())
    })
    .await;
    // Idle in transaction for SESSION_TIMEOUT, then ended; the margin is for
    // a busy machine. Before the bound, this took as long as Linux's TCP
    // keepalive (about 2 h 11 min).
    assert!(
        freed_after < SESSION_TIMEOUT + Duration::from_secs(6),
        "rows freed {freed_after:?} after the relay vanished"
    );
    assert_eq!(
        q.stats("default").await.unwrap().pending,
        51,
        "one task per row"
    );

    // A itself gives its batch up within its own bound (three session
    // timeouts: claim, Redis, mark), not when its 60 s Redis wait ends.
    let (a_result, a_took) = tokio::time::timeout(Duration::from_secs(30), a)
        .await
        .expect("relay A gives up its batch")
        .unwrap();
    assert!(
        matches!(a_result, Err(RelayError::TimedOut(_))),
        "A gives its batch up at its own bound: {a_result:?}"
    );
    assert!(
        a_took < SESSION_TIMEOUT * 3 + Duration::from_secs(3),
        "A gave up after {a_took:?}"
    );
}
