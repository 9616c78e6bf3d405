//! The client port carries gRPC (HTTP/2) and, as etcd's does, plain HTTP/1.1 (`/metrics`,
//! `/health`...): each accepted connection is told apart by its first bytes. HTTP/2 connections
//! (the preface `PRI * HTTP/2.0`) go to tonic through the `:authority` shim; the others are
//! served one by one by hyper with the monitoring router.

use std::io;
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::server::transport::AuthorityShim;

/// The HTTP/2 client preface starts with these bytes.
const H2_PREFIX: &[u8] = b"PRI ";
/// How long a new connection may take to send its first bytes.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);

/// A gRPC connection for tonic.
pub(crate) type GrpcConn = AuthorityShim<TcpStream>;

/// Accept on `listener` until the receiver is dropped; HTTP/2 connections are sent on, HTTP/1
/// ones served with `http`.
pub(crate) fn spawn_accept(
    listener: TcpListener,
    http: Router,
) -> (mpsc::Receiver<io::Result<GrpcConn>>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let _ = stream.set_nodelay(true);
            let tx = tx.clone();
            let http = http.clone();
            tokio::spawn(async move {
                match is_http2(&stream).await {
                    Ok(true) => {
                        let _ = tx.send(Ok(AuthorityShim::new(stream))).await;
                    }
                    Ok(false) => serve_http1(stream, http).await,
                    Err(e) => tracing::debug!(error = %e, "client connection closed early"),
                }
            });
        }
    });
    (rx, task)
}

/// Whether the connection starts with the HTTP/2 preface (waits for 4 bytes, bounded).
async fn is_http2(stream: &TcpStream) -> io::Result<bool> {
    let mut buf = [0u8; 4];
    let sniff = async {
        loop {
            let n = stream.peek(&mut buf).await?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            if buf[..n] != H2_PREFIX[..n] {
                return Ok(false);
            }
            if n == H2_PREFIX.len() {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(SNIFF_TIMEOUT, sniff)
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// Serve one HTTP/1.1 connection with `router`.
pub(crate) async fn serve_http1(stream: TcpStream, router: Router) {
    let svc = hyper_util::service::TowerToHyperService::new(router);
    let io = hyper_util::rt::TokioIo::new(stream);
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, svc)
        .await
    {
        tracing::debug!(error = %e, "HTTP/1 client connection ended with an error");
    }
}

/// Serve `router` on its own listener (`--listen-metrics-urls`).
pub(crate) fn spawn_http(listener: TcpListener, router: Router) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::warn!(error = %e, "metrics listener stopped");
        }
    })
}
