//! Ports for the servers a test starts itself (redis-server, aiosmtpd,
//! chromedriver, a `serve` child, a cuttable link's far end).
//!
//! Not "bind port 0, release it and hope": such a port is in the ephemeral
//! range (32768-60999 here), where any outgoing connection on the machine may
//! take it before the child binds it. Instead each test process hands out
//! ports from a block below that range, each port once, starting at an
//! offset drawn from its pid (two test processes at once rarely overlap),
//! skipping any port something already answers on. The block's ports stay
//! below 22768 so that port + 10000, which a Redis Cluster node takes for
//! its bus, is below the ephemeral range as well. A server that cannot bind
//! its port all the same is started again on the next one
//! ([`super::process`]).

use std::{
    net::TcpStream,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

const FIRST: u32 = 20_000;
const SIZE: u32 = 2_768;

static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);

/// A loopback port nothing answers on, and that this process has not handed
/// out before; its port + 10000 is free too.
pub fn next_port() -> u16 {
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() * 7919) % SIZE,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SIZE {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SIZE) as u16;
        if !answers(port) && !answers(port + 10_000) {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SIZE)
}

/// Whether something accepts connections on 127.0.0.1:`port`.
pub fn answers(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}
