//! `crawler store`: one member of the etcd-compatible store, with etcd's flag names, so that
//! scripts written for `etcd` work with little change.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use crawler_raft::{ClusterState, NodeConfig};

use super::process::{block_on, init_logging, wait_for_signal};
use crate::server::compactor::{self, CompactionMode, RetentionError};
use crate::server::member::Member;
use crate::server::member::{Limits, MemberConfig};
use crate::util::url::{
    parse_dial_override, parse_url, parse_url_list, HttpUrl, UrlError, UrlList,
};

/// How long to wait for the embedded member to elect itself before going on anyway.
const LEADER_WAIT: Duration = Duration::from_secs(15);

/// `--initial-cluster-state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InitialClusterState {
    /// Bootstrap a new cluster with the members of `--initial-cluster`.
    New,
    /// Join a cluster that already exists (after `member add`).
    Existing,
}

/// Flags of `crawler store` (names and defaults follow etcd's).
#[derive(Clone, Debug, Args)]
pub struct StoreArgs {
    /// Human-readable name of this member.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Path to the data directory (default `<name>.etcd`; `crawler dev`: `crawler-dev.data`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic (the first one is used).
    #[arg(long, default_value = "http://127.0.0.1:2379", value_parser = parse_url_list)]
    pub listen_client_urls: UrlList,
    /// Client URLs advertised to the cluster (default: the listen client URLs).
    #[arg(long, value_parser = parse_url_list)]
    pub advertise_client_urls: Option<UrlList>,
    /// URLs to listen on for peer traffic (the first one is used).
    #[arg(long, default_value = "http://127.0.0.1:2380", value_parser = parse_url_list)]
    pub listen_peer_urls: UrlList,
    /// This member's peer URLs advertised to the rest of the cluster.
    #[arg(long, default_value = "http://127.0.0.1:2380", value_parser = parse_url_list)]
    pub initial_advertise_peer_urls: UrlList,
    /// Initial cluster configuration for bootstrapping: `name=url,name=url,...`
    /// (default: `<name>=<initial-advertise-peer-urls>`).
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// Initial cluster state: `new` or `existing`.
    #[arg(long, value_enum, default_value = "new")]
    pub initial_cluster_state: InitialClusterState,
    /// Initial cluster token, mixed into cluster and member ids.
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, default_value_t = 1000)]
    pub election_timeout: u64,
    /// Number of committed transactions to trigger a snapshot to disk (the raft log is purged
    /// up to it) [default: 100000; master and dev: 10000].
    #[arg(long)]
    pub snapshot_count: Option<u64>,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, default_value_t = 1536 * 1024)]
    pub max_request_bytes: usize,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Raise the NOSPACE alarm (and refuse writes that add data) when the db exceeds this
    /// many bytes; 0 = the default, 2 GiB.
    #[arg(long, default_value_t = 0)]
    pub quota_backend_bytes: u64,
    /// URLs to also serve /metrics, /health, /livez and /readyz on (HTTP; the first is used).
    #[arg(long, value_parser = parse_url_list)]
    pub listen_metrics_urls: Option<UrlList>,
    /// Log level: debug, info, warn, error (RUST_LOG overrides it).
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Interpret --auto-compaction-retention as a time window (`periodic`) or as a number of
    /// revisions (`revision`).
    #[arg(long, value_enum, default_value = "periodic")]
    pub auto_compaction_mode: CompactionMode,
    /// Auto compaction retention: periodic mode takes a duration (`30s`, `5m`, `1h30m`) or a
    /// whole number of hours, revision mode a number of revisions; 0 turns it off. Default: 0
    /// for `crawler store` (as etcd), 1m for `crawler master` and `crawler dev`.
    // Hyphen values allowed so that `-1h` reaches the parser and gets its own error.
    #[arg(long, allow_hyphen_values = true)]
    pub auto_compaction_retention: Option<String>,
    /// Testing only: how often the revision-mode compactor runs (etcd: 5m), a Go duration.
    #[arg(long, hide = true, value_parser = parse_check_interval)]
    pub auto_compaction_check_interval: Option<std::time::Duration>,
    /// Testing only: dial `<dial-url>` whenever a peer advertised as `<advertised-url>` is
    /// contacted (fault tests route peer links through proxies). Repeatable.
    #[arg(long = "peer-dial-override", hide = true, value_name = "ADVERTISED=DIAL",
          value_parser = parse_dial_override)]
    pub peer_dial_overrides: Vec<(String, String)>,
}

/// Errors of the store command's configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--{flag}: {source}")]
    Url {
        flag: &'static str,
        #[source]
        source: UrlError,
    },
    #[error("--initial-cluster: entry {0:?} must have the form name=http://host:port")]
    ClusterEntry(String),
    #[error("--initial-cluster {cluster:?} does not contain this member's --name {name:?}")]
    NameMissing { cluster: String, name: String },
    #[error(
        "--initial-cluster has {name}={cluster_urls:?} but --initial-advertise-peer-urls is \
         {advertised:?}; they must match"
    )]
    PeerUrlMismatch {
        name: String,
        cluster_urls: Vec<String>,
        advertised: Vec<String>,
    },
    #[error("--name must not be empty")]
    EmptyName,
    #[error("--{0} must be positive")]
    NotPositive(&'static str),
    #[error("--election-timeout ({election}) must be at least 5 times --heartbeat-interval ({heartbeat})")]
    Timeouts { election: u64, heartbeat: u64 },
    // Not a `#[source]`: the message already includes it, and `{:#}` would print it twice.
    #[error("--auto-compaction-retention: {0}")]
    AutoCompactionRetention(RetentionError),
}

/// Defaults of the store flags that differ between `crawler store` and the members that
/// `crawler master` and `crawler dev` embed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberDefaults {
    /// `--auto-compaction-retention`.
    pub auto_compaction_retention: &'static str,
    /// `--snapshot-count`.
    pub snapshot_count: u64,
}

/// `crawler store`: etcd's defaults (no compaction, a snapshot every 100000 entries).
pub const STORE_DEFAULTS: MemberDefaults = MemberDefaults {
    auto_compaction_retention: STORE_AUTO_COMPACTION_RETENTION,
    snapshot_count: 100_000,
};

/// `crawler master` and `crawler dev`: a crawler's store takes checkpoints without end, so it
/// compacts, and snapshots every 10000 entries (etcd's default before 3.2) so that the raft
/// log on disk is purged often: with 100000, a crawl's log held every checkpoint of the last
/// 100000 entries.
pub const EMBEDDED_DEFAULTS: MemberDefaults = MemberDefaults {
    auto_compaction_retention: EMBEDDED_AUTO_COMPACTION_RETENTION,
    snapshot_count: 10_000,
};

/// `--auto-compaction-retention` of `crawler store` when not given: off, as in etcd.
pub const STORE_AUTO_COMPACTION_RETENTION: &str = "0";
/// `--auto-compaction-retention` of `crawler master` and `crawler dev` when not given: a
/// crawler writes checkpoints many times a second for days, and its watchers reload after a
/// compaction, so one minute of history is enough (kube-apiserver keeps 5m of far fewer writes).
pub const EMBEDDED_AUTO_COMPACTION_RETENTION: &str = "1m";

/// Parse the hidden `--auto-compaction-check-interval` (a positive Go duration).
fn parse_check_interval(s: &str) -> Result<std::time::Duration, RetentionError> {
    match compactor::parse_go_duration(s)? {
        d if d.is_zero() => Err(RetentionError::Duration(s.into())),
        d => Ok(d),
    }
}

/// Parse `--initial-cluster` (`name=url,...`; a name may repeat for several URLs).
pub fn parse_initial_cluster(s: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, url) = entry
            .split_once('=')
            .ok_or_else(|| ConfigError::ClusterEntry(entry.into()))?;
        if name.is_empty() {
            return Err(ConfigError::ClusterEntry(entry.into()));
        }
        let url = parse_url(url).map_err(|source| ConfigError::Url {
            flag: "initial-cluster",
            source,
        })?;
        out.push((name.to_string(), url.to_string()));
    }
    if out.is_empty() {
        return Err(ConfigError::ClusterEntry(s.into()));
    }
    Ok(out)
}

impl StoreArgs {
    /// Validate the flags and build the member configuration (`crawler store`'s defaults).
    pub fn member_config(&self) -> Result<MemberConfig, ConfigError> {
        self.member_config_with(STORE_DEFAULTS)
    }

    /// Like `member_config`, with `defaults` for the flags not given (master and dev compact
    /// and snapshot more often than a plain store).
    pub fn member_config_with(
        &self,
        defaults: MemberDefaults,
    ) -> Result<MemberConfig, ConfigError> {
        let retention = defaults.auto_compaction_retention;
        let snapshot_count = self.snapshot_count.unwrap_or(defaults.snapshot_count);
        if self.name.is_empty() {
            return Err(ConfigError::EmptyName);
        }
        if self.heartbeat_interval == 0 {
            return Err(ConfigError::NotPositive("heartbeat-interval"));
        }
        if self.election_timeout < 5 * self.heartbeat_interval {
            return Err(ConfigError::Timeouts {
                election: self.election_timeout,
                heartbeat: self.heartbeat_interval,
            });
        }
        if self.max_request_bytes == 0 {
            return Err(ConfigError::NotPositive("max-request-bytes"));
        }
        if self.max_txn_ops == 0 {
            return Err(ConfigError::NotPositive("max-txn-ops"));
        }
        if snapshot_count == 0 {
            return Err(ConfigError::NotPositive("snapshot-count"));
        }
        let first = |list: &UrlList, flag: &'static str| -> Result<SocketAddr, ConfigError> {
            list.first()
                .ok_or(UrlError::Empty)
                .and_then(HttpUrl::socket_addr)
                .map_err(|source| ConfigError::Url { flag, source })
        };
        let listen_client = first(&self.listen_client_urls, "listen-client-urls")?;
        let listen_peer = first(&self.listen_peer_urls, "listen-peer-urls")?;
        let advertise_peer = self.initial_advertise_peer_urls.strings();
        let advertise_client = self
            .advertise_client_urls
            .as_ref()
            .unwrap_or(&self.listen_client_urls)
            .strings();

        let initial_cluster = match &self.initial_cluster {
            Some(s) => parse_initial_cluster(s)?,
            None => advertise_peer
                .iter()
                .map(|u| (self.name.clone(), u.clone()))
                .collect(),
        };
        let mut mine: Vec<String> = initial_cluster
            .iter()
            .filter(|(n, _)| *n == self.name)
            .map(|(_, u)| u.clone())
            .collect();
        if mine.is_empty() {
            return Err(ConfigError::NameMissing {
                cluster: self.initial_cluster.clone().unwrap_or_default(),
                name: self.name.clone(),
            });
        }
        let mut advertised = advertise_peer.clone();
        mine.sort();
        advertised.sort();
        if mine != advertised {
            return Err(ConfigError::PeerUrlMismatch {
                name: self.name.clone(),
                cluster_urls: mine,
                advertised,
            });
        }

        let auto_compaction = compactor::parse_retention(
            self.auto_compaction_mode,
            self.auto_compaction_retention
                .as_deref()
                .unwrap_or(retention),
            self.auto_compaction_check_interval
                .unwrap_or(compactor::REVISION_CHECK_INTERVAL),
        )
        .map_err(ConfigError::AutoCompactionRetention)?;

        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", self.name)));
        Ok(MemberConfig {
            node: NodeConfig {
                name: self.name.clone(),
                data_dir,
                listen_peer,
                advertise_peer_urls: advertise_peer,
                advertise_client_urls: advertise_client,
                initial_cluster,
                initial_cluster_state: match self.initial_cluster_state {
                    InitialClusterState::New => ClusterState::New,
                    InitialClusterState::Existing => ClusterState::Existing,
                },
                cluster_token: self.initial_cluster_token.clone(),
                heartbeat_interval_ms: self.heartbeat_interval,
                election_timeout_ms: self.election_timeout,
                snapshot_count,
                peer_dial_overrides: self.peer_dial_overrides.iter().cloned().collect(),
            },
            listen_client,
            limits: Limits {
                max_request_bytes: self.max_request_bytes,
                max_txn_ops: self.max_txn_ops,
                quota_backend_bytes: self.quota_backend_bytes,
            },
            auto_compaction,
        })
    }
}

/// Start a store member from the store flags (auto-compaction on unless the flags say otherwise),
/// and wait (bounded) until the cluster has a leader.
pub async fn start_embedded(store: &StoreArgs) -> anyhow::Result<Member> {
    let cfg = store.member_config_with(EMBEDDED_DEFAULTS)?;
    let mut member = crate::services::start_member(cfg).await?;
    serve_metrics_urls(store, &mut member).await?;
    let deadline = tokio::time::Instant::now() + LEADER_WAIT;
    while member.raft().status().leader.is_none() {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("the store has no leader yet; going on (clients retry)");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(member)
}

/// Serve the monitoring endpoints on the first `--listen-metrics-urls`, if given.
async fn serve_metrics_urls(args: &StoreArgs, member: &mut Member) -> anyhow::Result<()> {
    let Some(list) = &args.listen_metrics_urls else {
        return Ok(());
    };
    let addr = list
        .first()
        .ok_or(UrlError::Empty)
        .and_then(HttpUrl::socket_addr)
        .map_err(|source| ConfigError::Url {
            flag: "listen-metrics-urls",
            source,
        })?;
    member.serve_metrics(addr).await?;
    Ok(())
}

/// Entry point of `crawler store`.
pub fn main(args: StoreArgs) -> ExitCode {
    init_logging(&args.log_level);
    block_on("store", run(args))
}

/// Run a member until Ctrl-C or SIGTERM.
async fn run(args: StoreArgs) -> anyhow::Result<()> {
    let cfg = args.member_config()?;
    let mut member = crate::services::start_member(cfg).await?;
    serve_metrics_urls(&args, &mut member).await?;
    {
        // The ready line is the contract with scripts and tests that spawn the binary.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "crawler store ready: member {:x} client {} peer {}",
            member.raft().id(),
            member.client_addr(),
            member.raft().peer_addr()
        );
        let _ = out.flush();
    }
    wait_for_signal().await;
    tracing::info!("shutting down");
    member.shutdown().await
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;
    use crate::cli::{Cli, Command};

    fn store(args: &[&str]) -> Result<StoreArgs, clap::Error> {
        let mut v = vec!["crawler", "store"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).map(|c| match c.command {
            Command::Store(s) => s,
            other => panic!("expected the store command, got {other:?}"),
        })
    }

    #[test]
    fn defaults() {
        let cfg = store(&[]).expect("parse").member_config().expect("valid");
        assert_eq!(cfg.node.name, "default");
        assert_eq!(cfg.node.data_dir, PathBuf::from("default.etcd"));
        assert_eq!(cfg.listen_client, "127.0.0.1:2379".parse().expect("addr"));
        assert_eq!(
            cfg.node.listen_peer,
            "127.0.0.1:2380".parse().expect("addr")
        );
        assert_eq!(
            cfg.node.initial_cluster,
            vec![("default".to_string(), "http://127.0.0.1:2380".to_string())]
        );
        assert_eq!(cfg.node.cluster_token, "etcd-cluster");
        assert_eq!(cfg.limits.max_request_bytes, 1536 * 1024);
        assert_eq!(cfg.limits.max_txn_ops, 128);
    }

    #[test]
    fn cluster_flags() {
        let a = store(&[
            "--name",
            "n2",
            "--listen-peer-urls",
            "http://127.0.0.1:3002",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:3002",
            "--initial-cluster",
            "n1=http://127.0.0.1:3001,n2=http://127.0.0.1:3002",
            "--initial-cluster-state",
            "existing",
        ])
        .expect("parse");
        let cfg = a.member_config().expect("valid");
        assert_eq!(cfg.node.initial_cluster.len(), 2);
        assert_eq!(cfg.node.initial_cluster_state, ClusterState::Existing);

        let missing = store(&["--name", "n3", "--initial-cluster", "n1=http://a:1"])
            .expect("parse")
            .member_config();
        assert!(matches!(missing, Err(ConfigError::NameMissing { .. })));

        let mismatch = store(&["--name", "n1", "--initial-cluster", "n1=http://127.0.0.1:9"])
            .expect("parse")
            .member_config();
        assert!(matches!(mismatch, Err(ConfigError::PeerUrlMismatch { .. })));

        let o = store(&[
            "--peer-dial-override",
            "http://127.0.0.1:3001=http://127.0.0.1:4001",
            "--peer-dial-override",
            "http://127.0.0.1:3002=http://127.0.0.1:4002",
        ])
        .expect("parse")
        .member_config()
        .expect("valid");
        assert_eq!(
            o.node.peer_dial_overrides.get("http://127.0.0.1:3002"),
            Some(&"http://127.0.0.1:4002".to_string())
        );
        assert!(store(&["--peer-dial-override", "http://a:1"]).is_err());

        let err = store(&["--listen-client-urls", "localhost:2379"]).expect_err("bad url");
        assert!(err.to_string().contains("--listen-client-urls"), "{err}");
    }

    #[test]
    fn auto_compaction_flags() {
        use crate::server::compactor::AutoCompaction;
        use std::time::Duration;

        let plain = store(&[]).expect("parse");
        assert_eq!(
            plain.member_config().expect("valid").auto_compaction,
            AutoCompaction::Off,
            "crawler store does not compact unless asked (etcd's default)"
        );
        assert_eq!(
            plain
                .member_config_with(EMBEDDED_DEFAULTS)
                .expect("valid")
                .auto_compaction,
            AutoCompaction::Periodic {
                retention: Duration::from_secs(60)
            }
        );
        let off = store(&["--auto-compaction-retention", "0"]).expect("parse");
        assert_eq!(
            off.member_config_with(EMBEDDED_DEFAULTS)
                .expect("valid")
                .auto_compaction,
            AutoCompaction::Off,
            "an explicit 0 turns the embedded default off"
        );
        let rev = store(&[
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "1000",
        ])
        .expect("parse");
        assert_eq!(
            rev.member_config().expect("valid").auto_compaction,
            AutoCompaction::Revision {
                retention: 1000,
                interval: Duration::from_secs(300)
            }
        );
        let fast = store(&[
            "--auto-compaction-mode=revision",
            "--auto-compaction-retention=10",
            "--auto-compaction-check-interval=200ms",
        ])
        .expect("parse");
        assert_eq!(
            fast.member_config().expect("valid").auto_compaction,
            AutoCompaction::Revision {
                retention: 10,
                interval: Duration::from_millis(200)
            }
        );

        let err = store(&["--auto-compaction-mode", "hourly"]).expect_err("bad mode");
        assert!(err.to_string().contains("--auto-compaction-mode"), "{err}");
        let err = store(&["--auto-compaction-check-interval", "0"]).expect_err("zero");
        assert!(
            err.to_string().contains("--auto-compaction-check-interval"),
            "{err}"
        );
        for (mode, bad) in [("periodic", "5x"), ("periodic", "-1h"), ("revision", "5m")] {
            let err = store(&[
                "--auto-compaction-mode",
                mode,
                "--auto-compaction-retention",
                bad,
            ])
            .expect("parse")
            .member_config()
            .expect_err("bad retention");
            assert!(
                err.to_string().starts_with("--auto-compaction-retention: "),
                "{err}"
            );
        }
        let help = Cli::command()
            .find_subcommand_mut("store")
            .expect("store command")
            .render_long_help()
            .to_string();
        assert!(help.contains("--auto-compaction-retention"), "{help}");
        assert!(!help.contains("--auto-compaction-check-interval"), "{help}");
    }
}
