//! Serving the router on a listener: HTTP/1.1, a header-read timeout
//! (`HTTP_HEADER_TIMEOUT`: a client that sends nothing, or trickles its
//! headers, cannot hold a connection and its memory open), at most
//! `HTTP_MAX_CONNECTIONS` connections (beyond, new ones wait in the kernel's
//! backlog), the peer's address in each request for the per-client rate
//! limit, and a graceful stop. HTTP/2 is not offered: a JSON API behind a
//! proxy gains little from it, and its idle connections would need timers of
//! their own.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper::{Request, body::Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::{
    config::HttpConfig,
    metrics::{self, Refusal},
};

/// Serves `router` on `listener` until `stop`, then lets the open requests
/// finish (within `HTTP_SHUTDOWN_GRACE`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    http: &HttpConfig,
    stop: CancellationToken,
) {
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(http.header_timeout);
    let header_timeout = http.header_timeout;
    let connections = Arc::new(Semaphore::new(http.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let slot = tokio::select! {
            _ = stop.cancelled() => break,
            slot = connections.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: wait a moment
                    // rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = router
            .clone()
            .map_request(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                req
            });
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            let _slot = slot;
            // hyper's header timer starts with the first byte: a client that
            // sends none is closed here.
            let mut first = [0u8; 1];
            match tokio::time::timeout(header_timeout, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return,
                Err(_) => {
                    metrics::edge_refused(Refusal::SilentConnection);
                    return;
                }
            }
            let connection = builder.serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(service),
            );
            // A connection's end (the client went, a timeout) is no news.
            let _ = watcher.watch(connection).await;
        });
    }
    drop(listener);
    if tokio::time::timeout(http.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still open at the end of the shutdown grace");
    }
}
