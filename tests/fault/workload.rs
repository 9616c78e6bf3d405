//! The KV workload: concurrent clients, each bound to one member position, doing linearizable
//! reads, unique-value puts and compare-and-sets (on value or mod revision) over a few keys,
//! recording every operation in the shared [`Recorder`].
//!
//! Outcomes: `ok` when the member answered; `fail` when the error guarantees the operation had
//! no effect (request rejected by validation, "no leader" — never proposed — or the connection
//! was refused, so nothing was sent); `unknown` for everything else (deadline exceeded, request
//! timed out inside the store, connection lost after sending). After an unknown outcome the client
//! continues as a new process id, as in Jepsen.

use std::collections::HashMap;
use std::time::Duration;

use crawler_proto::etcdserverpb as pb;
use crawler_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crawler_proto::etcdserverpb::kv_client::KvClient;
use crawler_proto::etcdserverpb::request_op::Request as OpReq;
use crawler_proto::etcdserverpb::response_op::Response as OpResp;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::cluster::{channel, req, Topology};
use super::history::{OpKind, Outcome, Recorder};

/// Workload parameters.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    /// Number of clients (spread over member positions round-robin).
    pub clients: usize,
    /// Number of keys.
    pub keys: usize,
    /// Key prefix (keys are `<prefix>k<i>`).
    pub prefix: String,
    /// Deadline of each operation.
    pub op_timeout: Duration,
    /// Seed of the clients' random choices.
    pub seed: u64,
}

/// Running clients.
pub struct Workload {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Number of clients.
    pub clients: usize,
}

/// How an operation ended, before recording.
enum Res<T> {
    Ok(T),
    Fail(String),
    Unknown(String),
}

impl Workload {
    /// Start the clients.
    pub fn spawn(cfg: WorkloadConfig, topology: Topology, recorder: Recorder) -> Workload {
        let (stop, rx) = watch::channel(false);
        let tasks = (0..cfg.clients)
            .map(|c| {
                let client = Client {
                    id: c,
                    clients: cfg.clients,
                    position: c % topology.len().max(1),
                    topology: topology.clone(),
                    recorder: recorder.clone(),
                    keys: (0..cfg.keys)
                        .map(|k| format!("{}k{k}", cfg.prefix))
                        .collect(),
                    op_timeout: cfg.op_timeout,
                    rng: StdRng::seed_from_u64(
                        cfg.seed ^ (c as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    ),
                    known: HashMap::new(),
                    generation: 0,
                    seq: 0,
                };
                tokio::spawn(client.run(rx.clone()))
            })
            .collect();
        Workload {
            stop,
            tasks,
            clients: cfg.clients,
        }
    }

    /// Stop the clients and wait for their last operation to finish.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Process ids of the reads recorded from a failed CAS's failure branch are offset by this.
pub const SHADOW_BASE: u64 = 1 << 40;

/// The client index a recorded process id belongs to.
pub fn client_of(process: u64, clients: usize) -> usize {
    ((process % SHADOW_BASE) % clients.max(1) as u64) as usize
}

/// Whether a process id is that of a shadow read (see [`SHADOW_BASE`]).
pub fn is_shadow(process: u64) -> bool {
    process >= SHADOW_BASE
}

struct Client {
    id: usize,
    clients: usize,
    position: usize,
    topology: Topology,
    recorder: Recorder,
    keys: Vec<String>,
    op_timeout: Duration,
    rng: StdRng,
    /// Last value and mod revision this client saw per key (CAS operands).
    known: HashMap<String, (Option<String>, u64)>,
    generation: u64,
    seq: u64,
}

impl Client {
    fn process(&self) -> u64 {
        self.generation * self.clients as u64 + self.id as u64
    }

    async fn run(mut self, stop: watch::Receiver<bool>) {
        let mut url = String::new();
        let mut kv: Option<KvClient<Channel>> = None;
        while !*stop.borrow() {
            let now_url = self.topology.url(self.position);
            if now_url != url || kv.is_none() {
                url = now_url;
                kv = channel(&url).ok().map(KvClient::new);
            }
            let Some(client) = kv.as_mut() else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let key = self.keys[self.rng.gen_range(0..self.keys.len())].clone();
            let dice = self.rng.gen_range(0..100);
            let outcome = if dice < 40 {
                self.read(client, &key).await
            } else if dice < 65 {
                self.write(client, &key).await
            } else {
                self.cas(client, &key, dice >= 90).await
            };
            match outcome {
                Outcome::Ok => {}
                Outcome::Unknown => self.generation += 1,
                // Fast failures (member down, no leader): don't spin.
                Outcome::Fail => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn next_value(&mut self) -> String {
        self.seq += 1;
        format!("c{}-{}", self.id, self.seq)
    }

    async fn read(&mut self, kv: &mut KvClient<Channel>, key: &str) -> Outcome {
        let h = self.recorder.invoke(self.process(), key, OpKind::read());
        let r = pb::RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        };
        let res = call(self.op_timeout, kv.range(req(r, self.op_timeout))).await;
        match res {
            Res::Ok(resp) => {
                let (value, rev) = match resp.kvs.first() {
                    Some(kv) => (
                        Some(String::from_utf8_lossy(&kv.value).to_string()),
                        u64::try_from(kv.mod_revision).unwrap_or(0),
                    ),
                    None => (None, 0),
                };
                self.known.insert(key.to_string(), (value.clone(), rev));
                let _ = self.recorder.ok_read(h, value, Some(rev));
                Outcome::Ok
            }
            Res::Fail(_) => {
                let _ = self.recorder.fail(h);
                Outcome::Fail
            }
            Res::Unknown(_) => {
                let _ = self.recorder.unknown(h);
                Outcome::Unknown
            }
        }
    }

    async fn write(&mut self, kv: &mut KvClient<Channel>, key: &str) -> Outcome {
        let value = self.next_value();
        let h = self
            .recorder
            .invoke(self.process(), key, OpKind::write(value.clone()));
        let r = pb::PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.clone().into_bytes(),
            ..Default::default()
        };
        match call(self.op_timeout, kv.put(req(r, self.op_timeout))).await {
            Res::Ok(resp) => {
                let rev = resp
                    .header
                    .and_then(|h| u64::try_from(h.revision).ok())
                    .filter(|r| *r > 0);
                self.known
                    .insert(key.to_string(), (Some(value), rev.unwrap_or(0)));
                let _ = self.recorder.ok_write(h, rev);
                Outcome::Ok
            }
            Res::Fail(_) => {
                let _ = self.recorder.fail(h);
                Outcome::Fail
            }
            Res::Unknown(_) => {
                let _ = self.recorder.unknown(h);
                Outcome::Unknown
            }
        }
    }

    /// Compare-and-set on the value (or, with `by_revision`, on the mod revision) against what
    /// this client last saw; the failure branch reads the key, recorded as a separate read whose
    /// interval is the transaction's.
    async fn cas(&mut self, kv: &mut KvClient<Channel>, key: &str, by_revision: bool) -> Outcome {
        let (expected, expected_rev) = self.known.get(key).cloned().unwrap_or((None, 0));
        let new = self.next_value();
        let kind = if by_revision {
            OpKind::cas_revision(expected_rev, new.clone())
        } else {
            OpKind::cas(expected.as_deref(), new.clone())
        };
        let process = self.process();
        let h = self.recorder.invoke(process, key, kind);
        // Invoked before the request is sent, so its interval covers the real read.
        let shadow = self
            .recorder
            .invoke(SHADOW_BASE + process, key, OpKind::read());
        let k = key.as_bytes().to_vec();
        let compare = if by_revision {
            pb::Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Mod as i32,
                key: k.clone(),
                range_end: Vec::new(),
                target_union: Some(TargetUnion::ModRevision(
                    i64::try_from(expected_rev).unwrap_or(i64::MAX),
                )),
            }
        } else {
            match &expected {
                Some(v) => pb::Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Value as i32,
                    key: k.clone(),
                    range_end: Vec::new(),
                    target_union: Some(TargetUnion::Value(v.clone().into_bytes())),
                },
                // "Absent" is version 0 in etcd.
                None => pb::Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Version as i32,
                    key: k.clone(),
                    range_end: Vec::new(),
                    target_union: Some(TargetUnion::Version(0)),
                },
            }
        };
        let txn = pb::TxnRequest {
            compare: vec![compare],
            success: vec![pb::RequestOp {
                request: Some(OpReq::RequestPut(pb::PutRequest {
                    key: k.clone(),
                    value: new.clone().into_bytes(),
                    ..Default::default()
                })),
            }],
            failure: vec![pb::RequestOp {
                request: Some(OpReq::RequestRange(pb::RangeRequest {
                    key: k,
                    ..Default::default()
                })),
            }],
        };
        match call(self.op_timeout, kv.txn(req(txn, self.op_timeout))).await {
            Res::Ok(resp) => {
                if resp.succeeded {
                    let rev = resp
                        .header
                        .and_then(|h| u64::try_from(h.revision).ok())
                        .filter(|r| *r > 0);
                    self.known
                        .insert(key.to_string(), (Some(new), rev.unwrap_or(0)));
                    let _ = self.recorder.ok_cas(h, true, rev);
                    let _ = self.recorder.unknown(shadow);
                } else {
                    let _ = self.recorder.ok_cas(h, false, None);
                    let observed = resp.responses.first().and_then(|r| match &r.response {
                        Some(OpResp::ResponseRange(rr)) => Some(match rr.kvs.first() {
                            Some(kv) => (
                                Some(String::from_utf8_lossy(&kv.value).to_string()),
                                u64::try_from(kv.mod_revision).unwrap_or(0),
                            ),
                            None => (None, 0),
                        }),
                        _ => None,
                    });
                    match observed {
                        Some((value, rev)) => {
                            self.known.insert(key.to_string(), (value.clone(), rev));
                            let _ = self.recorder.ok_read(shadow, value, Some(rev));
                        }
                        None => {
                            let _ = self.recorder.unknown(shadow);
                        }
                    }
                }
                Outcome::Ok
            }
            Res::Fail(_) => {
                let _ = self.recorder.fail(h);
                let _ = self.recorder.unknown(shadow);
                Outcome::Fail
            }
            Res::Unknown(_) => {
                let _ = self.recorder.unknown(h);
                let _ = self.recorder.unknown(shadow);
                Outcome::Unknown
            }
        }
    }
}

/// Run one unary call with a hard deadline and classify its failure.
async fn call<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) -> Res<T> {
    match tokio::time::timeout(timeout + Duration::from_millis(200), fut).await {
        Err(_) => Res::Unknown("client deadline".into()),
        Ok(Ok(r)) => Res::Ok(r.into_inner()),
        Ok(Err(s)) => match classify(&s) {
            Outcome::Fail => Res::Fail(s.message().to_string()),
            _ => Res::Unknown(s.message().to_string()),
        },
    }
}

/// Whether a failed call certainly had no effect (`Fail`) or may have had one (`Unknown`).
pub fn classify(s: &Status) -> Outcome {
    match s.code() {
        Code::InvalidArgument
        | Code::OutOfRange
        | Code::NotFound
        | Code::FailedPrecondition
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::Unimplemented => Outcome::Fail,
        // The store only answers "no leader" for requests it never proposed.
        Code::Unavailable if s.message() == "etcdserver: no leader" => Outcome::Fail,
        Code::Unavailable if is_connect_error(s) => Outcome::Fail,
        _ => Outcome::Unknown,
    }
}

/// A transport error from connecting: the request was never sent.
fn is_connect_error(s: &Status) -> bool {
    use std::error::Error as _;
    let mut text = s.message().to_string();
    let mut src: Option<&(dyn std::error::Error + 'static)> = s.source();
    while let Some(e) = src {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        text.push_str(": ");
        text.push_str(&e.to_string());
        src = e.source();
    }
    let lower = text.to_ascii_lowercase();
    lower.contains("tcp connect error") || lower.contains("connection refused")
}
