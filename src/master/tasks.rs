//! Tasks as data: the task API's operations (add, replace, delete, pause, resume, recrawl; get
//! and list), shared by the HTTP and gRPC front ends.
//!
//! A task is its spec (`/crawler/specs/<name>`) and its resource (`/resources/<name>`). Every
//! command runs on the leader, under its fence, as one txn over both keys (and the pause mark,
//! the progress and, for a purge or a recrawl, the checkpoints), conditioned on the keys being as
//! the leader just read them; a follower forwards the command. Reads are answered by any master
//! from one consistent read of the store.
//!
//! - pause: the resource is unassigned (its worker stops, checkpointing) and the pause mark set,
//!   so the leader leaves it unassigned; resume removes the mark and assigns it again (the worker
//!   resumes from the checkpoint: the resource ID is unchanged).
//! - recrawl: a new resource ID and no checkpoints or done mark: the worker starts over from the
//!   seeds.
//! - a changed spec keeps the resource ID: the worker restarts the run from its checkpoint.
//! - delete keeps the checkpoints unless purged; adding the task again then resumes from them
//!   (its resource takes the checkpoint's ID).

use super::api::ApiError;
use super::assign::Load;
use super::ops::{lost, now_nanos, Route};
use super::resources::{resource_key, validate_name, StoredResource, WriteError};
use super::state::{Inner, Term};
use super::task_api::{TaskCommand, TaskDetail, TaskStatus};
use crate::client::{
    prefix_range_end, Compare, CompareResult, CompareTarget, DeleteRangeRequest, KeyValue,
    PutRequest, RangeRequest, RequestOp, ResponseOp, TxnRequest,
};
use crate::crawl::validate::parse_spec_json;
use crate::model::resource::{format_assigned, task_prefix, Resource, RESOURCE_PREFIX};
use crate::model::spec::{
    paused_key, spec_key, status_key, TaskProgress, PAUSED_PREFIX, SPEC_PREFIX, STATUS_PREFIX,
};
use crate::model::task::TaskConfig;

/// What the store holds about one task.
#[derive(Clone, Debug, Default)]
struct TaskRecord {
    name: String,
    spec: Option<(TaskConfig, i64)>,
    resource: Option<StoredResource>,
    /// Mod revisions of the spec and resource keys as stored, readable or not (the compares).
    spec_rev: Option<i64>,
    resource_rev: Option<i64>,
    /// Why a stored value could not be read (a PUT or DELETE rewrites or removes it).
    invalid: Option<String>,
    paused: Option<i64>,
    progress: Option<TaskProgress>,
}

impl TaskRecord {
    fn exists(&self) -> bool {
        self.spec_rev.is_some() || self.resource_rev.is_some()
    }

    fn status(&self) -> TaskStatus {
        let mut s = TaskStatus {
            name: self.name.clone(),
            state: String::new(),
            detail: None,
            worker: None,
            resource_id: None,
            pages: 0,
            items: 0,
            errors: 0,
            frontier: 0,
            pages_per_sec: 0.0,
            last_checkpoint: None,
            updated_at: None,
        };
        if let Some(why) = &self.invalid {
            s.state = "invalid".into();
            s.detail = Some(format!(
                "{why}; PUT a spec to rewrite it, or DELETE the task"
            ));
            return s;
        }
        let Some(r) = &self.resource else {
            s.state = "stopped".into();
            s.detail = Some("no resource: PUT the task to run it again".into());
            return s;
        };
        let r = &r.resource;
        s.resource_id = Some(r.id.clone());
        s.worker = r.assigned_id().map(str::to_string);
        let current = self
            .progress
            .as_ref()
            .filter(|p| p.resource_id == r.id && Some(p.worker.as_str()) == r.assigned_id());
        if let Some(p) = self.progress.as_ref().filter(|p| p.resource_id == r.id) {
            // Counters survive a move or a pause (the next run resumes from them).
            s.pages = p.pages;
            s.items = p.items;
            s.errors = p.errors;
            s.frontier = p.frontier;
            s.last_checkpoint = p.last_checkpoint.clone();
            s.updated_at = Some(p.updated_at.clone());
        }
        if self.paused.is_some() {
            s.state = "paused".into();
        } else if self.spec.is_none() && current.is_none() {
            s.state = "no_spec".into();
            s.detail = Some(format!(
                "no spec for task {:?} in the store ({SPEC_PREFIX}{}): a worker can run it only from its own [[Tasks]]; add one with `crawler task add`",
                self.name, self.name
            ));
        } else if r.assigned_node.is_empty() {
            s.state = "unassigned".into();
            s.detail = Some("waiting for a live worker".into());
        } else if let Some(p) = current {
            s.state = p.state.clone();
            s.detail = p.detail.clone();
            s.pages_per_sec = p.pages_per_sec;
        } else {
            s.state = "assigned".into();
            s.detail = Some("waiting for the worker's first report".into());
        }
        s
    }

    /// Spec and status as the API shows them (a sink's DSN without its password).
    fn detail(&self) -> TaskDetail {
        let spec = self.spec.as_ref().map(|(t, _)| {
            let mut t = t.clone();
            t.sink = t.sink.as_ref().map(|s| s.redacted());
            t
        });
        TaskDetail {
            spec,
            status: self.status(),
        }
    }
}

fn range(key: String, prefix: bool) -> RequestOp {
    let key = key.into_bytes();
    RequestOp::Range(RangeRequest {
        range_end: if prefix {
            prefix_range_end(&key)
        } else {
            Vec::new()
        },
        key,
        ..RangeRequest::default()
    })
}

fn put(key: String, value: Vec<u8>) -> RequestOp {
    RequestOp::Put(PutRequest {
        key: key.into_bytes(),
        value,
        ..PutRequest::default()
    })
}

fn delete(key: String) -> RequestOp {
    RequestOp::DeleteRange(DeleteRangeRequest {
        key: key.into_bytes(),
        ..DeleteRangeRequest::default()
    })
}

fn delete_prefix(prefix: String) -> RequestOp {
    let key = prefix.into_bytes();
    RequestOp::DeleteRange(DeleteRangeRequest {
        range_end: prefix_range_end(&key),
        key,
        ..DeleteRangeRequest::default()
    })
}

/// `key` is as read: its mod revision `rev`, or absent.
fn unchanged(key: String, rev: Option<i64>) -> Compare {
    Compare {
        result: CompareResult::Equal,
        target: match rev {
            Some(r) => CompareTarget::Mod(r),
            None => CompareTarget::Create(0),
        },
        key: key.into_bytes(),
        range_end: Vec::new(),
    }
}

fn name_after<'a>(kv: &'a KeyValue, prefix: &str) -> Option<&'a str> {
    let name = std::str::from_utf8(kv.key.strip_prefix(prefix.as_bytes())?).ok()?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

fn not_found(name: &str) -> ApiError {
    ApiError::NotFound(format!("task {name} not found"))
}

impl Inner {
    /// Every task (each name with a spec or a resource), by name.
    pub async fn list_tasks(&self) -> Result<Vec<TaskStatus>, ApiError> {
        let recs = self.read_tasks(None).await?;
        Ok(recs.iter().map(TaskRecord::status).collect())
    }

    /// One task's spec and status.
    pub async fn get_task(&self, name: &str) -> Result<TaskDetail, ApiError> {
        validate_name(name).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let rec = self.read_task(name).await?;
        if !rec.exists() {
            return Err(not_found(name));
        }
        Ok(rec.detail())
    }

    /// Run a task command on the leader (forwarded there from a follower). The reply is the
    /// task after the command (`None` after a delete).
    pub async fn task_command(
        &self,
        name: &str,
        cmd: TaskCommand,
        forwarded: bool,
    ) -> Result<Option<TaskDetail>, ApiError> {
        validate_name(name).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        if let Some(t) = cmd.spec() {
            if t.name != name {
                return Err(ApiError::InvalidArgument(format!(
                    "Name: {:?} is not the task's name in the request ({name:?})",
                    t.name
                )));
            }
        }
        match self.route(forwarded).await? {
            Route::Forward(addr) => self.forward.task_command(&addr, name, &cmd).await,
            Route::Local(term) => {
                tokio::select! {
                    r = self.task_local(&term, name, cmd) => r,
                    _ = term.ended() => Err(lost()),
                }
            }
        }
    }

    async fn task_local(
        &self,
        term: &Term,
        name: &str,
        cmd: TaskCommand,
    ) -> Result<Option<TaskDetail>, ApiError> {
        let _op = self.op_lock.lock().await;
        let rec = self.read_task(name).await?;
        let rkey = resource_key(name);
        let mut conds = vec![
            unchanged(rkey.clone(), rec.resource_rev),
            unchanged(spec_key(name), rec.spec_rev),
        ];
        if rec.exists() {
            conds.push(unchanged(paused_key(name), rec.paused));
        }
        let mut ops = Vec::new();
        match &cmd {
            TaskCommand::Add(spec) => {
                if rec.exists() {
                    return Err(ApiError::AlreadyExists(format!(
                        "task {name} already exists"
                    )));
                }
                // Checkpoints kept by a delete without purge: resume from them.
                let kept = self.kept_checkpoint_id(name).await?;
                let id = match kept {
                    Some(id) => id,
                    None => self.mint_id().await?,
                };
                let r = Resource {
                    id,
                    name: name.to_string(),
                    assigned_node: self.least_loaded(name).await?,
                    creation_time: now_nanos(),
                };
                ops.push(put(spec_key(name), spec_json(spec)));
                ops.push(put(rkey, r.encode()));
                ops.push(delete(status_key(name)));
                ops.push(delete(paused_key(name)));
            }
            TaskCommand::Put(spec) => {
                if !rec.exists() {
                    return Err(not_found(name));
                }
                // A spec sent back as GET showed it: the stored DSN password stays.
                let mut spec = spec.clone();
                if let (Some(new), Some(old)) = (
                    spec.sink.as_mut(),
                    rec.spec.as_ref().and_then(|(t, _)| t.sink.as_ref()),
                ) {
                    new.restore_password(old);
                }
                let spec = &spec;
                ops.push(put(spec_key(name), spec_json(spec)));
                // No resource, or an unreadable one: a new one.
                if rec.resource.is_none() {
                    let assigned = if rec.paused.is_some() {
                        String::new()
                    } else {
                        self.least_loaded(name).await?
                    };
                    let r = Resource {
                        id: self.mint_id().await?,
                        name: name.to_string(),
                        assigned_node: assigned,
                        creation_time: now_nanos(),
                    };
                    ops.push(put(rkey, r.encode()));
                }
            }
            TaskCommand::Delete { purge } => {
                if !rec.exists() {
                    return Err(not_found(name));
                }
                ops.push(delete(rkey));
                ops.push(delete(spec_key(name)));
                ops.push(delete(paused_key(name)));
                ops.push(delete(status_key(name)));
                if *purge {
                    ops.push(delete_prefix(task_prefix(name)));
                }
            }
            TaskCommand::Pause | TaskCommand::Resume | TaskCommand::Recrawl => {
                let Some(stored) = &rec.resource else {
                    return Err(match &rec.invalid {
                        Some(why) => ApiError::InvalidArgument(format!(
                            "task {name}: {why}; PUT a spec to rewrite it"
                        )),
                        None => not_found(name),
                    });
                };
                let mut r = stored.resource.clone();
                match cmd {
                    TaskCommand::Pause => {
                        if rec.paused.is_some() {
                            return Ok(Some(rec.detail()));
                        }
                        r.assigned_node = String::new();
                        ops.push(put(paused_key(name), b"paused".to_vec()));
                    }
                    TaskCommand::Resume => {
                        if rec.paused.is_none() {
                            return Ok(Some(rec.detail()));
                        }
                        ops.push(delete(paused_key(name)));
                        if r.assigned_node.is_empty() {
                            r.assigned_node = self.least_loaded(name).await?;
                        }
                    }
                    _ => {
                        r.id = self.mint_id().await?;
                        ops.push(delete_prefix(task_prefix(name)));
                        ops.push(delete(status_key(name)));
                    }
                }
                ops.push(put(rkey, r.encode()));
            }
        }
        // A recrawl deletes checkpoint keys the old run may still be writing: its writes are
        // guarded by the resource value, which this txn changes, so none lands after.
        match self
            .store
            .write(
                &term.fence,
                conds,
                ops,
                WriteError::Missing(format!("task {name} changed meanwhile; retry")),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(task = %name, action = cmd.action(), "task command applied");
            }
            Err(WriteError::Fenced) => {
                tracing::warn!("fenced write failed: leadership lost");
                term.end();
                return Err(lost());
            }
            Err(WriteError::Missing(m)) | Err(WriteError::Exists(m)) => {
                return Err(ApiError::Unavailable(m))
            }
            Err(WriteError::Kv(e)) => return Err(e.into()),
        }
        if matches!(cmd, TaskCommand::Delete { .. }) {
            return Ok(None);
        }
        Ok(Some(self.read_task(name).await?.detail()))
    }

    /// `AssignedNode` for a task placed now: the least-loaded live worker, or empty.
    async fn least_loaded(&self, name: &str) -> Result<String, ApiError> {
        let (stored, _) = self.store.load().await?;
        let workers = self.workers.snapshot();
        let load = Load::count(stored.iter().map(|s| &s.resource), &workers);
        Ok(load
            .least_loaded_for(&workers, name)
            .map(|n| format_assigned(&n.id, &n.address))
            .unwrap_or_default())
    }

    /// The resource ID of a checkpoint a delete left behind, if any.
    async fn kept_checkpoint_id(&self, name: &str) -> Result<Option<String>, ApiError> {
        #[derive(serde::Deserialize)]
        struct Kept {
            resource_id: String,
        }
        let prefix = task_prefix(name);
        for key in ["manifest", "done"] {
            let reply = self.client.txn(TxnRequest {
                compare: Vec::new(),
                success: vec![range(format!("{prefix}{key}"), false)],
                failure: Vec::new(),
            });
            let reply = reply.await?;
            if let Some(ResponseOp::Range(r)) = reply.body.responses.first() {
                if let Some(kv) = r.kvs.first() {
                    if let Ok(k) = serde_json::from_slice::<Kept>(&kv.value) {
                        return Ok(Some(k.resource_id));
                    }
                }
            }
        }
        Ok(None)
    }

    /// One task's record (empty when it does not exist).
    async fn read_task(&self, name: &str) -> Result<TaskRecord, ApiError> {
        Ok(self
            .read_tasks(Some(name))
            .await?
            .into_iter()
            .next()
            .unwrap_or_else(|| TaskRecord {
                name: name.to_string(),
                ..TaskRecord::default()
            }))
    }

    /// Every task's record (or one's), from one consistent read.
    async fn read_tasks(&self, only: Option<&str>) -> Result<Vec<TaskRecord>, ApiError> {
        let prefixes = [RESOURCE_PREFIX, SPEC_PREFIX, PAUSED_PREFIX, STATUS_PREFIX];
        let success = prefixes
            .iter()
            .map(|p| match only {
                Some(name) => range(format!("{p}{name}"), false),
                None => range(p.to_string(), true),
            })
            .collect();
        let reply = self
            .client
            .txn(TxnRequest {
                compare: Vec::new(),
                success,
                failure: Vec::new(),
            })
            .await?;
        let mut ranges = reply.body.responses.into_iter().map(|r| match r {
            ResponseOp::Range(r) => r.kvs,
            _ => Vec::new(),
        });
        let resources = ranges.next().unwrap_or_default();
        let specs = ranges.next().unwrap_or_default();
        let paused = ranges.next().unwrap_or_default();
        let status = ranges.next().unwrap_or_default();
        let mut out: std::collections::BTreeMap<String, TaskRecord> = Default::default();
        let entry = |out: &mut std::collections::BTreeMap<String, TaskRecord>, name: &str| {
            out.entry(name.to_string())
                .or_insert_with(|| TaskRecord {
                    name: name.to_string(),
                    ..TaskRecord::default()
                })
                .name
                .clone()
        };
        for kv in &resources {
            let Some(name) = name_after(kv, RESOURCE_PREFIX) else {
                continue;
            };
            let n = entry(&mut out, name);
            let Some(t) = out.get_mut(&n) else {
                continue;
            };
            t.resource_rev = Some(kv.mod_revision);
            match Resource::decode(&kv.value) {
                Ok(r) => {
                    t.resource = Some(StoredResource {
                        resource: Resource {
                            name: n.clone(),
                            ..r
                        },
                        mod_revision: kv.mod_revision,
                    })
                }
                Err(e) => t.invalid = Some(format!("the stored resource is unreadable: {e}")),
            }
        }
        for kv in &specs {
            let Some(name) = name_after(kv, SPEC_PREFIX) else {
                continue;
            };
            let n = entry(&mut out, name);
            let Some(rec) = out.get_mut(&n) else {
                continue;
            };
            rec.spec_rev = Some(kv.mod_revision);
            match parse_spec_json(&kv.value) {
                Ok(t) => rec.spec = Some((t, kv.mod_revision)),
                Err(e) => rec.invalid = Some(format!("the stored spec is invalid: {e}")),
            }
        }
        for kv in &paused {
            if let Some(rec) = name_after(kv, PAUSED_PREFIX).and_then(|n| out.get_mut(n)) {
                rec.paused = Some(kv.mod_revision);
            }
        }
        for kv in &status {
            if let Some(rec) = name_after(kv, STATUS_PREFIX).and_then(|n| out.get_mut(n)) {
                rec.progress = serde_json::from_slice(&kv.value).ok();
            }
        }
        Ok(out.into_values().collect())
    }
}

/// A spec as stored.
fn spec_json(t: &TaskConfig) -> Vec<u8> {
    serde_json::to_vec(t).unwrap_or_else(|_| b"{}".to_vec())
}
