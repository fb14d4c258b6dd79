//! The relay's sessions bound themselves: a relay host that vanishes mid-batch
//! without closing its connection (no FIN: power loss, a partition) holds
//! nothing another relay needs, and gives its own batch up within two
//! RELAY_SESSION_TIMEOUTs.

use std::time::{Duration, Instant};

use simplebank::{app::Clients, outbox::relay::RelayError};

use crate::common::{CuttableLink, TestEnv, eventually, postgres_addr};
use crate::relay::{insert_rows, undispatched};

/// The vanishing relay's session timeout, short for the test.
const SESSION_TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::test]
async fn a_relay_that_vanishes_mid_batch_holds_nothing_up() {
    let env = TestEnv::new().await;
    let pg_link = CuttableLink::to(postgres_addr(&env.db_url)).await;

    // Relay A reaches Postgres through a link.
    let mut cfg_a = env.cfg.clone();
    cfg_a.db.url = Some(pg_link.postgres_url(&env.db_url));
    cfg_a.relay.session_timeout = SESSION_TIMEOUT;
    let relay_a = Clients::new(&cfg_a).unwrap().relay(&cfg_a).unwrap();
    // One batch while all is well: A's connection is up.
    insert_rows(&env, 1).await;
    assert_eq!(relay_a.forward_batch().await.unwrap().forwarded, 1);
    insert_rows(&env, 50).await;
    // Now A's host is gone mid-batch: nothing passes, nothing is closed.
    pg_link.blackhole();
    let vanished = Instant::now();
    let a = tokio::spawn(async move {
        let result = relay_a.forward_batch().await;
        (result, vanished.elapsed())
    });

    // A's batch holds no lock and no position: relay B forwards the rows at
    // once. (The relay before the snapshot reads held its claimed rows
    // until Postgres ended A's transaction; before the session bounds, that
    // took as long as Linux's TCP keepalive, about 2 h 11 min.)
    let relay_b = Clients::new(&env.cfg).unwrap().relay(&env.cfg).unwrap();
    let freed_after = eventually(Duration::from_secs(30), "B forwards the rows", || async {
        relay_b.forward_batch().await.unwrap();
        (undispatched(&env).await == 0).then(|| vanished.elapsed())
    })
    .await;
    assert!(
        freed_after < SESSION_TIMEOUT,
        "rows forwarded {freed_after:?} after the relay vanished"
    );
    let q = env.queue();
    assert_eq!(
        q.stats("default").await.unwrap().pending,
        51,
        "one task per row"
    );

    // A itself gives its batch up within its own bound (two session
    // timeouts), not when the kernel gives up on the link.
    let (a_result, a_took) = tokio::time::timeout(Duration::from_secs(30), a)
        .await
        .expect("relay A gives up its batch")
        .unwrap();
    assert!(
        matches!(a_result, Err(RelayError::TimedOut(_))),
        "A gives its batch up at its own bound: {a_result:?}"
    );
    assert!(
        a_took < SESSION_TIMEOUT * 2 + Duration::from_secs(3),
        "A gave up after {a_took:?}"
    );
}
