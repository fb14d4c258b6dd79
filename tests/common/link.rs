//! Links a test can break: a TCP proxy to a real server that can be cut,
//! restored, or made to lose replies; and the addresses of the dev servers.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// A TCP link to a real server that a test can cut and restore. Cut, the
/// client sees what it sees when the server goes away: open connections end,
/// and a new one is closed as soon as it is accepted. The server itself keeps
/// running, with the test's data, for the test to inspect. While replies are
/// swallowed, requests reach the server and its answers are dropped: a reply
/// lost on the way back. Blackholed, nothing passes either way and nothing is
/// closed: a peer that vanished without a FIN (power loss, a partition).
///
/// The link's port is bound once, for its whole life: a cut closes
/// connections, not the listener, so no other process can take the port
/// while the link is down.
pub struct CuttableLink {
    pub port: u16,
    state: Arc<LinkState>,
    accept: tokio::task::JoinHandle<()>,
}

struct LinkState {
    target: SocketAddr,
    swallow: AtomicBool,
    blackhole: AtomicBool,
    /// Cancelled by a cut: every pipe of the current connections ends.
    up: std::sync::Mutex<Option<CancellationToken>>,
    pipes: TaskTracker,
}

impl CuttableLink {
    pub async fn to(target: SocketAddr) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(LinkState {
            target,
            swallow: AtomicBool::new(false),
            blackhole: AtomicBool::new(false),
            up: std::sync::Mutex::new(Some(CancellationToken::new())),
            pipes: TaskTracker::new(),
        });
        let accept = tokio::spawn(accept_loop(listener, state.clone()));
        Self {
            port,
            state,
            accept,
        }
    }

    /// The Postgres URL `url` with its host and port replaced by this link's.
    pub fn postgres_url(&self, url: &str) -> String {
        let mut url = url::Url::parse(url).unwrap();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(self.port)).unwrap();
        url.into()
    }

    /// The Redis URL of this link.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// From now until the next [`CuttableLink::restore`], the server's answers
    /// are dropped on the way back.
    pub fn swallow_replies(&self) {
        self.state.swallow.store(true, Ordering::SeqCst);
    }

    /// From now on, nothing passes in either direction, and no connection is
    /// closed: each end hears nothing more from the other.
    pub fn blackhole(&self) {
        self.state.blackhole.store(true, Ordering::SeqCst);
    }

    /// Lets connections through again (and replies, if they were swallowed).
    pub async fn restore(&mut self) {
        self.state.swallow.store(false, Ordering::SeqCst);
        self.state.blackhole.store(false, Ordering::SeqCst);
        let mut up = self.state.up.lock().unwrap();
        assert!(up.is_none(), "already up");
        *up = Some(CancellationToken::new());
    }

    /// Ends every connection through the link; until [`CuttableLink::restore`],
    /// new ones are closed as soon as they are accepted. Both ends of every
    /// pipe are closed before this returns.
    pub async fn cut(&mut self) {
        let token = self.state.up.lock().unwrap().take().expect("link is up");
        token.cancel();
        // Wait for the pipes of the cut connections (none can start now).
        self.state.pipes.close();
        self.state.pipes.wait().await;
        self.state.pipes.reopen();
    }
}

impl Drop for CuttableLink {
    fn drop(&mut self) {
        self.accept.abort();
        if let Some(token) = self.state.up.lock().unwrap().take() {
            token.cancel();
        }
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<LinkState>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        // Down: the connection is dropped (closed) at once.
        let Some(token) = state.up.lock().unwrap().clone() else {
            continue;
        };
        let state2 = state.clone();
        state.pipes.spawn(async move {
            let Ok(server) = tokio::net::TcpStream::connect(state2.target).await else {
                return;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let (requests, replies) = ([&state2.blackhole], [&state2.swallow, &state2.blackhole]);
            tokio::select! {
                _ = token.cancelled() => {}
                _ = pipe(client_read, server_write, &requests) => {}
                _ = pipe(server_read, client_write, &replies) => {}
            }
        });
    }
}

/// Copies `from` to `to` until either end closes; drops what it reads while
/// any of `dropping` is set.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, dropping: &[&AtomicBool]) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if dropping.iter().any(|d| d.load(Ordering::SeqCst)) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Host and port of a Postgres URL, resolved.
pub fn postgres_addr(url: &str) -> SocketAddr {
    url_addr(url, 5432)
}

/// Host and port of a Redis URL, resolved.
pub fn redis_addr(url: &str) -> SocketAddr {
    url_addr(url, 6379)
}

fn url_addr(url: &str, default_port: u16) -> SocketAddr {
    use std::net::ToSocketAddrs;
    let url = url::Url::parse(url).unwrap();
    (url.host_str().unwrap(), url.port().unwrap_or(default_port))
        .to_socket_addrs()
        .unwrap()
        .next()
        .unwrap()
}
