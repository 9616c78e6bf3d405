//! Applying log entries to the in-memory state: each command runs in its own [`WriteCtx`] and
//! either keeps its changes (staged for sled) or, on an etcd error, is rolled back; batches are
//! unpacked so every inner command gets its own revision and outcome.

use openraft::LogId;

use crate::error::{ApplyError, StoreError};
use crate::types::*;

use super::fault::Fault;
use super::state::State;
use super::write::WriteCtx;

/// One log entry's payload, as the non-generic state machine sees it.
pub(crate) enum Item {
    Blank,
    /// A membership entry: the `StoredMembership` encoded by the generic layer.
    Membership(Vec<u8>),
    Command(Command),
}

/// Execute one (non-batch) command on `st`, staging its writes in `st.unpersisted` and its
/// events into `notify`. The outer `Err` is a storage failure (the caller must reload `st`); the
/// inner one is the command's deterministic etcd error, after which `st` is unchanged.
fn apply_command(
    st: &mut State,
    tree: &sled::Tree,
    cmd: &Command,
    term: u64,
    notify: &mut Vec<(i64, Vec<Event>)>,
) -> Result<Result<CommandResult, ApplyError>, StoreError> {
    if st.no_space() && cmd.adds_data() {
        // etcd's capped applier: deterministic on every member, since the alarm is replicated.
        return Ok(Err(ApplyError::NoSpace));
    }
    let mut w = WriteCtx::new(st, tree, term);
    match w.command(cmd) {
        Ok(res) => {
            let done = w.finish();
            st.unpersisted.add(done.ops);
            if done.changed {
                st.current = done.main;
                notify.push((done.main, done.events));
            }
            Ok(Ok(res))
        }
        Err(Fault::Apply(e)) => {
            w.rollback();
            Ok(Err(e))
        }
        Err(Fault::Store(e)) => Err(e),
    }
}

/// Apply entries to `st`, staging every change in `st.unpersisted` (see [`State::persist`]);
/// returns the responses and the events to announce per revision. On `Err` the caller must
/// reload `st` from disk.
#[allow(clippy::type_complexity)]
pub(crate) fn apply_entries(
    st: &mut State,
    tree: &sled::Tree,
    items: Vec<(LogId<u64>, Item)>,
) -> Result<(Vec<ApplyResponse>, Vec<(i64, Vec<Event>)>), StoreError> {
    let mut responses = Vec::with_capacity(items.len());
    let mut notify = Vec::new();
    for (log_id, item) in items {
        let term = log_id.leader_id.term;
        let result = match item {
            Item::Blank => Ok(CommandResult::Done),
            Item::Membership(m) => {
                st.membership = Some(m);
                Ok(CommandResult::Done)
            }
            Item::Command(Command::Batch(cmds)) => {
                // Each inner command as if it were its own entry: own revision, own outcome.
                let mut inner = Vec::with_capacity(cmds.len());
                for cmd in &cmds {
                    let result = if matches!(cmd, Command::Batch(_)) {
                        Err(ApplyError::Internal("nested batch command".into()))
                    } else {
                        apply_command(st, tree, cmd, term, &mut notify)?
                    };
                    inner.push(ApplyResponse {
                        revision: st.current,
                        result,
                    });
                }
                Ok(CommandResult::Batch(inner))
            }
            Item::Command(cmd) => apply_command(st, tree, &cmd, term, &mut notify)?,
        };
        st.applied = Some(log_id);
        st.unpersisted.touch();
        responses.push(ApplyResponse {
            revision: st.current,
            result,
        });
    }
    Ok((responses, notify))
}
