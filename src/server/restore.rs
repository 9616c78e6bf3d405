//! `crawler snapshot restore`: a backup file (see `crawler_storage::backup`) made into the data
//! dir of one member of a new cluster, as etcdutl's `snapshot restore` does for etcd.
//!
//! The file is verified whole first. The data dir is written under a sibling temporary name and
//! renamed into place at the end, so a failed restore leaves no half-written data dir behind.
//! It holds the member's identity file (member and cluster ids derived from `--initial-cluster`
//! and `--initial-cluster-token`, as a first start derives them) and the state machine at the
//! file's revision with no raft log: the member's first start with the same `--initial-cluster`
//! flags bootstraps the new cluster's membership on top of it.

use std::path::{Path, PathBuf};

use crawler_raft::RaftError;
use crawler_storage::backup::{self, BackupError, Verified};

/// What a restore is told (etcdutl's flags).
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// `--name`.
    pub name: String,
    /// `--data-dir`: must not exist.
    pub data_dir: PathBuf,
    /// `--initial-cluster`, parsed.
    pub initial_cluster: Vec<(String, String)>,
    /// `--initial-cluster-token`.
    pub cluster_token: String,
}

/// What a restore wrote.
#[derive(Clone, Debug)]
pub struct RestoreReport {
    pub file: Verified,
    pub member_id: u64,
    pub cluster_id: u64,
    pub keys: u64,
    pub leases: u64,
    pub revision: i64,
}

/// Why a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(transparent)]
    Raft(#[from] RaftError),
    #[error("data-dir {} exists", .0.display())]
    Exists(PathBuf),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Restore `file` into `opts.data_dir`.
pub fn restore(file: &Path, opts: &RestoreOptions) -> Result<RestoreReport, RestoreError> {
    let verified = backup::verify(file)?;
    if opts.data_dir.exists() {
        return Err(RestoreError::Exists(opts.data_dir.clone()));
    }
    let mut tmp_name = opts
        .data_dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "data".into());
    tmp_name.push(".restoring");
    let tmp = opts.data_dir.with_file_name(tmp_name);
    if tmp.exists() {
        // Left by a restore that failed; nothing else writes there.
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    let result = write_data_dir(&verified, &tmp, opts);
    match result {
        Ok(report) => {
            std::fs::rename(&tmp, &opts.data_dir).map_err(io(&opts.data_dir))?;
            Ok(report)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn write_data_dir(
    verified: &Verified,
    dir: &Path,
    opts: &RestoreOptions,
) -> Result<RestoreReport, RestoreError> {
    let member = crawler_raft::prepare_restored_member(
        dir,
        &opts.name,
        &opts.initial_cluster,
        &opts.cluster_token,
    )?;
    let db = crawler_storage::open_db(&member.state_machine_dir).map_err(BackupError::from)?;
    let summary = crawler_storage::restore_backup(verified, &db)?;
    db.flush().map_err(BackupError::from)?;
    drop(db);
    Ok(RestoreReport {
        file: verified.clone(),
        member_id: member.member_id,
        cluster_id: member.cluster_id,
        keys: summary.keys,
        leases: summary.leases,
        revision: summary.revision,
    })
}
