//! The command line: one file per subcommand (its flags and its entry point), the process
//! plumbing they share in [`process`]; `main.rs` only calls [`main`].

mod dev;
mod master;
mod process;
mod site;
mod snapshot;
mod store;
mod task;
mod worker;

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

pub use dev::{DevArgs, DEV_DATA_DIR};
pub use master::MasterArgs;
pub use site::{DemoSiteArgs, SiteArgs};
pub use store::{
    parse_initial_cluster, ConfigError, InitialClusterState, MemberDefaults, StoreArgs,
    EMBEDDED_AUTO_COMPACTION_RETENTION, EMBEDDED_DEFAULTS, STORE_AUTO_COMPACTION_RETENTION,
    STORE_DEFAULTS,
};
pub use worker::WorkerArgs;

/// `crawler`: a distributed web crawler with a built-in etcd-compatible store.
#[derive(Debug, Parser)]
#[command(name = "crawler", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one member of the etcd-compatible store (flags as etcd's).
    Store(StoreArgs),
    /// Load generator speaking etcd's v3 API (compare our store with etcd).
    Bench(crate::bench::BenchArgs),
    /// Run a crawler master (embeds a store member unless `--etcd-endpoints` is given).
    Master(MasterArgs),
    /// Run a crawler worker against the store at `--registry`.
    Worker(WorkerArgs),
    /// One process with a single-node store, a master and a worker: try the crawler locally.
    Dev(DevArgs),
    /// Add, list, inspect and control crawl tasks through a master's API.
    Task(task::TaskArgs),
    /// Check a backup saved with `etcdctl snapshot save`, or restore it into a new cluster.
    Snapshot(snapshot::SnapshotArgs),
    /// Serve a generated site to crawl (crawl tests and benchmarks).
    Site(SiteArgs),
    /// Serve the demo book site that the sample config's `demo_books` task crawls (what
    /// `crawler dev` serves itself), for a cluster of masters and workers.
    DemoSite(DemoSiteArgs),
}

/// Parse the command line and run the chosen subcommand.
pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Whether `--log-level` was typed (the store flags give it a default): the config file's
    // `logLevel` applies only when it was not.
    let typed_log_level = |sub: &str| {
        matches
            .subcommand_matches(sub)
            .and_then(|m| m.value_source("log_level"))
            == Some(ValueSource::CommandLine)
    };
    match cli.command {
        Command::Store(args) => store::main(args),
        Command::Bench(args) => crate::bench::main(args),
        Command::Master(args) => master::main(args, typed_log_level("master")),
        Command::Worker(args) => worker::main(args),
        Command::Dev(args) => dev::main(args, typed_log_level("dev")),
        Command::Task(args) => task::main(args),
        Command::Snapshot(args) => snapshot::main(args),
        Command::Site(args) => site::main_site(args),
        Command::DemoSite(args) => site::main_demo_site(args),
    }
}
