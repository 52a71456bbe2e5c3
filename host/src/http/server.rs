//! The connection layer under the router: accepts TCP connections up to a
//! limit, serves HTTP/1.1 and HTTP/2 on each with hyper, bounds how long a
//! client may take to send its request head and its whole request, and
//! bounds how long a shutdown waits for connections to finish.
//!
//! Why not `axum::serve`: it has no connection limit and no header or body
//! read timeout, and its graceful shutdown waits forever on a connection
//! that never sends its body or never reads its stream.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use weir_core::settings::ServerLimits;

use super::AppError;

/// Answers 408 when a request has not produced its answer within `limit`
/// (a body that does not arrive, a handler that hangs).
pub(super) async fn request_deadline(limit: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => AppError::Timeout(format!(
            "the request was not complete within {} s",
            limit.as_secs_f64()
        ))
        .into_response(),
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown`
/// completes; then stops accepting, runs `wind_down` (the host's own
/// shutdown, which ends streams) beside the connections' graceful end, and
/// waits at most `limits.shutdown_timeout` for the connections.
pub(super) async fn serve<W>(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send,
    wind_down: impl FnOnce() -> W,
) -> std::io::Result<()>
where
    W: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(20)));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A permit first: beyond the limit, connections wait unaccepted.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            // hyper's header timeout starts with the first byte (its
            // protocol detection waits for one without a timer): a client
            // that connects and sends nothing is cut here.
            let mut first = [0u8; 1];
            match tokio::time::timeout(header_timeout, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::trace!(%peer, "connection ended: {e}");
            }
            drop(permit);
        });
    }
    tracing::info!("shutting down: no new connections");
    let winding = tokio::spawn(wind_down());
    let bound = limits.shutdown_timeout;
    let open = graceful.count();
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(bound) => {
            tracing::warn!(open, "connections still open after {} s of shutdown; dropping them", bound.as_secs_f64());
        }
    }
    // The host's own wind-down has bounded steps; wait for it within the
    // same bound.
    let _ = tokio::time::timeout(bound, winding).await;
    Ok(())
}
