//! KV workloads: `put`, `range` and `txn-cas`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crawler_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crawler_proto::etcdserverpb::kv_client::KvClient;
use crawler_proto::etcdserverpb::request_op::Request as Op;
use crawler_proto::etcdserverpb::response_op::Response as OpResp;
use crawler_proto::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use super::args::{Consistency, KeyArgs};
use super::ctx::{join_all, status_text, with_timeout, BenchError, Ctx};
use super::stats::{Recorder, Report};

/// Key `n` as a zero-padded decimal number of exactly `size` bytes.
pub fn key_bytes(n: u64, size: usize) -> Vec<u8> {
    format!("{n:0size$}").into_bytes()
}

/// Keys must be non-empty and wide enough for every number in the key space.
fn check_keys(keys: &KeyArgs) -> Result<(), BenchError> {
    if keys.key_size == 0 || keys.key_space == 0 {
        return Err(BenchError::Config(
            "--key-size and --key-space must be positive".into(),
        ));
    }
    let digits = (keys.key_space - 1).to_string().len();
    if digits > keys.key_size {
        return Err(BenchError::Config(format!(
            "--key-space {} needs keys of at least {digits} bytes (--key-size is {})",
            keys.key_space, keys.key_size
        )));
    }
    Ok(())
}

fn put_request(key: Vec<u8>, value: &[u8]) -> PutRequest {
    PutRequest {
        key,
        value: value.to_vec(),
        ..Default::default()
    }
}

/// `put`: each op writes one key (random in the key space, or sequential).
pub(super) async fn put(ctx: &Ctx, keys: &KeyArgs, sequential: bool) -> Result<Report, BenchError> {
    check_keys(keys)?;
    let value: Arc<[u8]> = vec![b'v'; keys.val_size].into();
    let budget = ctx.budget();
    let start = Instant::now();
    let mut handles = Vec::with_capacity(ctx.clients);
    for c in 0..ctx.clients {
        let mut client = KvClient::new(ctx.channel(c));
        let budget = budget.clone();
        let value = value.clone();
        let (key_size, key_space) = (keys.key_size, keys.key_space);
        handles.push(tokio::spawn(async move {
            let mut rec = Recorder::new();
            let mut rng = StdRng::from_entropy();
            while let Some(i) = budget.take() {
                let n = if sequential {
                    i % key_space
                } else {
                    rng.gen_range(0..key_space)
                };
                let req = put_request(key_bytes(n, key_size), &value);
                let t = Instant::now();
                match with_timeout(client.put(req)).await {
                    Ok(_) => rec.record(t.elapsed()),
                    Err(s) => rec.error(status_text(&s)),
                }
            }
            rec
        }));
    }
    let rec = join_all(handles).await?;
    Ok(rec.report("put", ctx.setup.clone(), start.elapsed()))
}

/// Put every key of the key space once, spread over the clients (not measured).
async fn prefill(ctx: &Ctx, keys: &KeyArgs) -> Result<(), BenchError> {
    let value: Arc<[u8]> = vec![b'v'; keys.val_size].into();
    let mut handles = Vec::with_capacity(ctx.clients);
    for c in 0..ctx.clients {
        let mut client = KvClient::new(ctx.channel(c));
        let value = value.clone();
        let (key_size, key_space, step) = (keys.key_size, keys.key_space, ctx.clients as u64);
        handles.push(tokio::spawn(async move {
            let mut n = c as u64;
            while n < key_space {
                let req = put_request(key_bytes(n, key_size), &value);
                with_timeout(client.put(req))
                    .await
                    .map_err(|s| format!("prefill put: {}", status_text(&s)))?;
                n += step;
            }
            Ok::<(), String>(())
        }));
    }
    for h in handles {
        h.await?.map_err(BenchError::Setup)?;
    }
    Ok(())
}

/// `range`: each op reads one random key, linearizable or serializable.
pub(super) async fn range(
    ctx: &Ctx,
    keys: &KeyArgs,
    consistency: Consistency,
    fill: bool,
) -> Result<Report, BenchError> {
    check_keys(keys)?;
    if fill {
        prefill(ctx, keys).await?;
    }
    let budget = ctx.budget();
    let start = Instant::now();
    let mut handles = Vec::with_capacity(ctx.clients);
    for c in 0..ctx.clients {
        let mut client = KvClient::new(ctx.channel(c));
        let budget = budget.clone();
        let (key_size, key_space) = (keys.key_size, keys.key_space);
        handles.push(tokio::spawn(async move {
            let mut rec = Recorder::new();
            let mut rng = StdRng::from_entropy();
            while budget.take().is_some() {
                let req = RangeRequest {
                    key: key_bytes(rng.gen_range(0..key_space), key_size),
                    serializable: consistency == Consistency::S,
                    ..Default::default()
                };
                let t = Instant::now();
                match with_timeout(client.range(req)).await {
                    // A prefilled key that reads as absent is a wrong answer, not a fast one.
                    Ok(resp) if fill && resp.kvs.is_empty() => rec.error("prefilled key not found"),
                    Ok(_) => rec.record(t.elapsed()),
                    Err(s) => rec.error(status_text(&s)),
                }
            }
            rec
        }));
    }
    let rec = join_all(handles).await?;
    let name = match consistency {
        Consistency::L => "range-l",
        Consistency::S => "range-s",
    };
    Ok(rec.report(name, ctx.setup.clone(), start.elapsed()))
}

/// The compare-and-swap transaction: put if the key's mod revision is still `rev`, else read it.
fn cas_txn(key: &[u8], rev: i64, value: &[u8]) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Mod as i32,
            key: key.to_vec(),
            range_end: Vec::new(),
            target_union: Some(TargetUnion::ModRevision(rev)),
        }],
        success: vec![RequestOp {
            request: Some(Op::RequestPut(put_request(key.to_vec(), value))),
        }],
        failure: vec![RequestOp {
            request: Some(Op::RequestRange(RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })),
        }],
    }
}

/// `txn-cas`: each op is one successful compare-and-swap on a random key. The client remembers
/// the mod revisions it has seen; a failed compare returns the current one and is retried
/// (counted as `retries`). Latency runs from the first attempt to the successful one.
pub(super) async fn txn_cas(
    ctx: &Ctx,
    keys: &KeyArgs,
    max_retries: u64,
) -> Result<Report, BenchError> {
    check_keys(keys)?;
    let value: Arc<[u8]> = vec![b'v'; keys.val_size].into();
    let budget = ctx.budget();
    let start = Instant::now();
    let mut handles = Vec::with_capacity(ctx.clients);
    for c in 0..ctx.clients {
        let mut client = KvClient::new(ctx.channel(c));
        let budget = budget.clone();
        let value = value.clone();
        let (key_size, key_space) = (keys.key_size, keys.key_space);
        handles.push(tokio::spawn(async move {
            let mut rec = Recorder::new();
            rec.add("retries", 0);
            let mut rng = StdRng::from_entropy();
            let mut known: HashMap<u64, i64> = HashMap::new();
            while budget.take().is_some() {
                let n = rng.gen_range(0..key_space);
                let key = key_bytes(n, key_size);
                // Revision 0 compares equal for a key that does not exist.
                let mut rev = known.get(&n).copied().unwrap_or(0);
                let mut failed = 0u64;
                let t = Instant::now();
                loop {
                    match with_timeout(client.txn(cas_txn(&key, rev, &value))).await {
                        Ok(resp) if resp.succeeded => {
                            if let Some(h) = resp.header {
                                known.insert(n, h.revision);
                            }
                            rec.record(t.elapsed());
                            break;
                        }
                        Ok(resp) => {
                            rec.add("retries", 1);
                            rev = current_mod_revision(&resp.responses);
                            failed += 1;
                            if failed > max_retries {
                                rec.error(format!("gave up after {max_retries} retries"));
                                break;
                            }
                        }
                        Err(s) => {
                            known.remove(&n);
                            rec.error(status_text(&s));
                            break;
                        }
                    }
                }
            }
            rec
        }));
    }
    let rec = join_all(handles).await?;
    Ok(rec.report("txn-cas", ctx.setup.clone(), start.elapsed()))
}

/// The mod revision read by the failure branch (0 if the key is absent).
fn current_mod_revision(responses: &[crawler_proto::etcdserverpb::ResponseOp]) -> i64 {
    responses
        .iter()
        .find_map(|r| match &r.response {
            Some(OpResp::ResponseRange(rr)) => Some(rr.kvs.first().map_or(0, |kv| kv.mod_revision)),
            _ => None,
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fixed_width() {
        assert_eq!(key_bytes(42, 8), b"00000042".to_vec());
        assert_eq!(key_bytes(0, 1), b"0".to_vec());
        let ok = KeyArgs {
            key_size: 3,
            val_size: 1,
            key_space: 1000,
        };
        assert!(check_keys(&ok).is_ok());
        let too_small = KeyArgs {
            key_space: 1001,
            ..ok.clone()
        };
        assert!(check_keys(&too_small).is_err());
    }
}
