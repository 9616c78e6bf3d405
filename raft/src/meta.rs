//! The member's identity file `<data_dir>/member/meta.json`: who this data dir belongs to.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{NodeId, RaftError};

/// Identity of the member owning a data dir.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// `--name` the dir was created with.
    pub name: String,
    /// This member's raft id.
    pub member_id: NodeId,
    /// Id of the cluster the member belongs to.
    pub cluster_id: u64,
    /// `--initial-cluster-token` the cluster was created with.
    pub cluster_token: String,
}

/// `<data_dir>/member`.
pub fn member_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("member")
}

/// `<data_dir>/member/db` (sled): the state machine.
pub fn db_dir(data_dir: &Path) -> PathBuf {
    member_dir(data_dir).join("db")
}

/// `<data_dir>/member/wal` (sled): the raft log and vote.
pub fn wal_dir(data_dir: &Path) -> PathBuf {
    member_dir(data_dir).join("wal")
}

fn meta_path(data_dir: &Path) -> PathBuf {
    member_dir(data_dir).join("meta.json")
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> RaftError {
    RaftError::Config(format!("{what} {}: {e}", path.display()))
}

/// Read the meta file; `None` when the data dir is fresh.
pub fn load(data_dir: &Path) -> Result<Option<Meta>, RaftError> {
    let path = meta_path(data_dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("cannot read", &path, e)),
    };
    let meta: Meta = serde_json::from_slice(&bytes).map_err(|e| {
        RaftError::Config(format!("corrupt member meta file {}: {e}", path.display()))
    })?;
    Ok(Some(meta))
}

/// Write the meta file atomically (temp file, fsync, rename, fsync dir).
pub fn store(data_dir: &Path, meta: &Meta) -> Result<(), RaftError> {
    let dir = member_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(|e| io_err("cannot create", &dir, e))?;
    let path = meta_path(data_dir);
    let tmp = dir.join("meta.json.tmp");
    let body = serde_json::to_vec_pretty(meta)
        .map_err(|e| RaftError::Internal(format!("encode member meta: {e}")))?;
    {
        let mut f = std::fs::File::create(&tmp).map_err(|e| io_err("cannot create", &tmp, e))?;
        f.write_all(&body)
            .map_err(|e| io_err("cannot write", &tmp, e))?;
        f.sync_all().map_err(|e| io_err("cannot sync", &tmp, e))?;
    }
    std::fs::rename(&tmp, &path).map_err(|e| io_err("cannot rename to", &path, e))?;
    // Make the rename itself durable.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Refuse to start on a data dir that belongs to another member or cluster.
pub fn check(data_dir: &Path, meta: &Meta, name: &str, token: &str) -> Result<(), RaftError> {
    if meta.name != name || meta.cluster_token != token {
        return Err(RaftError::Config(format!(
            "data dir {} belongs to member '{}' of cluster {:x} (member id {:x}, token '{}'), \
             but this member is started as '{}' with cluster token '{}'",
            data_dir.display(),
            meta.name,
            meta.cluster_id,
            meta.member_id,
            meta.cluster_token,
            name,
            token
        )));
    }
    if meta.member_id == 0 || meta.cluster_id == 0 {
        return Err(RaftError::Config(format!(
            "member meta file in {} has a zero member or cluster id",
            data_dir.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_check() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        assert_eq!(load(dir.path())?, None);
        let m = Meta {
            name: "a".into(),
            member_id: 7,
            cluster_id: 9,
            cluster_token: "t".into(),
        };
        store(dir.path(), &m)?;
        assert_eq!(load(dir.path())?, Some(m.clone()));
        check(dir.path(), &m, "a", "t")?;
        let err = check(dir.path(), &m, "b", "t").err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("belongs to member 'a'")));
        assert!(check(dir.path(), &m, "a", "u").is_err());
        Ok(())
    }

    #[test]
    fn corrupt_meta_is_config_error() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(member_dir(dir.path()))?;
        std::fs::write(meta_path(dir.path()), b"{not json")?;
        assert!(matches!(load(dir.path()), Err(RaftError::Config(_))));
        Ok(())
    }
}
