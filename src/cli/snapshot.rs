//! `crawler snapshot status|restore`: read a backup saved with `etcdctl snapshot save` (our
//! file format, see `crawler_storage::backup`) and restore it into a new cluster's data dirs with
//! etcdutl's flag names.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};

use super::store::parse_initial_cluster;
use crate::server::restore::{self, RestoreOptions};
use crate::util::url::{parse_url_list, UrlList};

/// `crawler snapshot`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

/// What to do with a snapshot file.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Check a snapshot file (checksum, structure) and show its revision, keys and size.
    Status(StatusArgs),
    /// Restore a snapshot file into a new member's data dir (one per member of the new cluster).
    Restore(RestoreArgs),
}

/// Output format of `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Simple,
    Json,
    Table,
}

/// `crawler snapshot status FILE`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The snapshot file.
    pub file: PathBuf,
    /// Output format: simple, json or table.
    #[arg(short = 'w', long = "write-out", value_enum, default_value = "simple")]
    pub write_out: OutputFormat,
}

/// `crawler snapshot restore FILE` (etcdutl's flags).
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The snapshot file.
    pub file: PathBuf,
    /// Human-readable name of the member being restored.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Path to the data directory to create (default `<name>.etcd`); it must not exist.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Initial cluster configuration of the new cluster: `name=url,...`
    /// (default: `<name>=<initial-advertise-peer-urls>`).
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// Initial cluster token of the new cluster.
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// This member's peer URLs.
    #[arg(long, default_value = "http://127.0.0.1:2380", value_parser = parse_url_list)]
    pub initial_advertise_peer_urls: UrlList,
}

/// Entry point of `crawler snapshot`.
pub fn main(args: SnapshotArgs) -> ExitCode {
    let result = match args.command {
        SnapshotCommand::Status(a) => status(&a),
        SnapshotCommand::Restore(a) => restore_cmd(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn status(a: &StatusArgs) -> anyhow::Result<()> {
    let v = crawler_storage::backup::verify(&a.file)?;
    let h = &v.header;
    match a.write_out {
        OutputFormat::Json => {
            let j = serde_json::json!({
                "hash": v.sha256,
                "revision": h.revision,
                "totalKey": h.key_count,
                "totalSize": v.size,
                "leases": h.lease_count,
                "compactRevision": h.compact_revision,
                "clusterId": format!("{:x}", h.cluster_id),
                "memberId": format!("{:x}", h.member_id),
                "checksum": "ok",
            });
            println!("{j}");
        }
        OutputFormat::Simple => println!(
            "{}, {}, {}, {}, checksum ok",
            &v.sha256[..8],
            h.revision,
            h.key_count,
            v.size
        ),
        OutputFormat::Table => {
            println!("+----------+----------+------------+------------+----------+");
            println!("|   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE | CHECKSUM |");
            println!("+----------+----------+------------+------------+----------+");
            println!(
                "| {} | {:>8} | {:>10} | {:>10} | {:>8} |",
                &v.sha256[..8],
                h.revision,
                h.key_count,
                v.size,
                "ok"
            );
            println!("+----------+----------+------------+------------+----------+");
        }
    }
    Ok(())
}

fn restore_cmd(a: &RestoreArgs) -> anyhow::Result<()> {
    let advertised = a.initial_advertise_peer_urls.strings();
    let initial_cluster = match &a.initial_cluster {
        Some(s) => parse_initial_cluster(s)?,
        None => advertised
            .iter()
            .map(|u| (a.name.clone(), u.clone()))
            .collect(),
    };
    let mut mine: Vec<String> = initial_cluster
        .iter()
        .filter(|(n, _)| *n == a.name)
        .map(|(_, u)| u.clone())
        .collect();
    let mut adv = advertised.clone();
    mine.sort();
    adv.sort();
    if mine.is_empty() {
        anyhow::bail!(
            "couldn't find local name '{}' in the initial cluster configuration",
            a.name
        );
    }
    if mine != adv {
        anyhow::bail!(
            "--initial-cluster has {mine:?} for '{}' but --initial-advertise-peer-urls is {adv:?}",
            a.name
        );
    }
    let data_dir = a
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", a.name)));
    let report = restore::restore(
        &a.file,
        &RestoreOptions {
            name: a.name.clone(),
            data_dir: data_dir.clone(),
            initial_cluster,
            cluster_token: a.initial_cluster_token.clone(),
        },
    )?;
    println!(
        "restored snapshot {} (revision {}, {} keys, {} leases) into {} as member {:x} of cluster {:x}",
        a.file.display(),
        report.revision,
        report.keys,
        report.leases,
        data_dir.display(),
        report.member_id,
        report.cluster_id
    );
    Ok(())
}
