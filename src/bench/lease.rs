//! `lease-keepalive`: keep-alive round trips on one lease per client.

use std::time::Instant;

use crawler_proto::etcdserverpb::lease_client::LeaseClient;
use crawler_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

use super::ctx::{join_all, status_text, with_timeout, BenchError, Ctx, REQUEST_TIMEOUT};
use super::stats::{Recorder, Report};

/// An open keep-alive stream: requests go into `tx`, responses come from `rx`.
struct KeepAliveStream {
    tx: mpsc::Sender<LeaseKeepAliveRequest>,
    rx: Streaming<LeaseKeepAliveResponse>,
}

/// One keep-alive round trip, opening the stream first if needed. The stream is opened by
/// queueing the first request before the call, since a server may send its response headers
/// only with its first message.
async fn round_trip(
    client: &mut LeaseClient<Channel>,
    stream: &mut Option<KeepAliveStream>,
    id: i64,
) -> Result<LeaseKeepAliveResponse, String> {
    let req = LeaseKeepAliveRequest { id };
    let s = match stream {
        Some(s) => {
            s.tx.send(req)
                .await
                .map_err(|_| "keep-alive stream closed".to_string())?;
            s
        }
        None => {
            let (tx, rx) = mpsc::channel(1);
            // The receiver is alive (held by the stream below), so this cannot fail.
            let _ = tx.send(req).await;
            let rx = with_timeout(client.lease_keep_alive(ReceiverStream::new(rx)))
                .await
                .map_err(|s| status_text(&s))?;
            stream.insert(KeepAliveStream { tx, rx })
        }
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, s.rx.message()).await {
        Ok(Ok(Some(resp))) => Ok(resp),
        Ok(Ok(None)) => Err("keep-alive stream ended".to_string()),
        Ok(Err(st)) => Err(status_text(&st)),
        Err(_) => Err("keep-alive response timed out (client side)".to_string()),
    }
}

/// `lease-keepalive`: grant one lease per client (not measured), then each op is one keep-alive
/// request/response on the client's own stream. A response with TTL ≤ 0 (lease lost) is an
/// error. The leases are revoked at the end.
pub(super) async fn keepalive(ctx: &Ctx, ttl: i64) -> Result<Report, BenchError> {
    if ttl <= 0 {
        return Err(BenchError::Config("--ttl must be positive".into()));
    }
    let mut leases = Vec::with_capacity(ctx.clients);
    for c in 0..ctx.clients {
        let mut client = LeaseClient::new(ctx.channel(c));
        let resp = with_timeout(client.lease_grant(LeaseGrantRequest { ttl, id: 0 }))
            .await
            .map_err(|s| BenchError::Setup(format!("lease grant: {}", status_text(&s))))?;
        if !resp.error.is_empty() {
            return Err(BenchError::Setup(format!("lease grant: {}", resp.error)));
        }
        leases.push(resp.id);
    }

    let budget = ctx.budget();
    let start = Instant::now();
    let mut handles = Vec::with_capacity(ctx.clients);
    for (c, &id) in leases.iter().enumerate() {
        let mut client = LeaseClient::new(ctx.channel(c));
        let budget = budget.clone();
        handles.push(tokio::spawn(async move {
            let mut rec = Recorder::new();
            let mut stream = None;
            while budget.take().is_some() {
                let t = Instant::now();
                match round_trip(&mut client, &mut stream, id).await {
                    Ok(resp) if resp.ttl > 0 && resp.id == id => rec.record(t.elapsed()),
                    Ok(resp) => rec.error(format!(
                        "lease {:x} not kept alive (id {:x}, ttl {})",
                        id, resp.id, resp.ttl
                    )),
                    Err(e) => {
                        stream = None;
                        rec.error(e);
                    }
                }
            }
            rec
        }));
    }
    let rec = join_all(handles).await?;
    let elapsed = start.elapsed();

    // Clean up so that repeated runs do not pile up leases; failures here do not matter.
    for (c, &id) in leases.iter().enumerate() {
        let mut client = LeaseClient::new(ctx.channel(c));
        let _ = with_timeout(client.lease_revoke(LeaseRevokeRequest { id })).await;
    }
    Ok(rec.report("lease-keepalive", ctx.setup.clone(), elapsed))
}
