//! `crawler master`: a crawler master, on an embedded store member or on `--etcd-endpoints`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use super::process::{block_on, fail, init_logging, load_config, log_level};
use super::process::{master_config, print_line, remote_client, wait_for_signal};
use super::store::{start_embedded, StoreArgs};
use crate::client::local::LocalClient;
use crate::client::KvClient;
use crate::config::{Config, Role, ServerOverrides};
use crate::master::Master;
use crate::server::member::Member;

/// Flags of `crawler master`. Values given here override the config file's `[MasterServer]`.
#[derive(Clone, Debug, Args)]
pub struct MasterArgs {
    /// Master id, 0..=1023 (snowflake node id; part of the election value). Default 1.
    #[arg(long)]
    pub id: Option<String>,
    /// HTTP API listen address, `:port` or `host:port` (default `:8081`).
    #[arg(long)]
    pub http: Option<String>,
    /// gRPC API listen address, `:port` or `host:port` (default `:9091`).
    #[arg(long)]
    pub grpc: Option<String>,
    /// Address other masters reach the gRPC API at (default 127.0.0.1:<grpc port> for `:port`).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Config file (`crawler.toml`); without it only defaults and flags apply (no seeds).
    #[arg(long, env = "CRAWLER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Use these etcd-compatible endpoints (comma-separated `host:port`) instead of embedding a
    /// store member; the store flags below are then ignored.
    #[arg(long)]
    pub etcd_endpoints: Option<String>,
    /// Bearer token the master's HTTP and gRPC APIs require (overrides `[MasterServer]
    /// APIToken`; `/health` and `/readyz` stay open).
    #[arg(long, env = "CRAWLER_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// The embedded store member (same flags as `crawler store`).
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Entry point of `crawler master`; `typed_log_level`: `--log-level` was given on the command
/// line (the store flags give it a default, and the config file's `logLevel` applies only when
/// it was not typed).
pub fn main(args: MasterArgs, typed_log_level: bool) -> ExitCode {
    let cfg = match load_config(args.config.as_deref(), false) {
        Ok(c) => c,
        Err(e) => return fail("master", &e),
    };
    let flag = typed_log_level.then_some(args.store.log_level.as_str());
    init_logging(&log_level(flag, &cfg));
    block_on("master", run(args, cfg))
}

/// `crawler master`.
async fn run(args: MasterArgs, cfg: Config) -> anyhow::Result<()> {
    let origin = args
        .config
        .as_ref()
        .map_or_else(|| "<defaults>".to_string(), |p| p.display().to_string());
    let overrides = ServerOverrides {
        id: args.id.clone(),
        http: args.http.clone(),
        grpc: args.grpc.clone(),
        advertise: args.advertise.clone(),
        registry: args.etcd_endpoints.clone(),
        register_ttl: None,
    };
    let settings = cfg
        .master_server
        .resolve(Role::Master, &overrides, &origin)?;
    let mut mcfg = master_config(&settings, &cfg)?;
    if let Some(t) = args
        .api_token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        mcfg.api_token = Some(t.to_string());
    }
    // External store when asked for on the command line or in the file; else embed a member.
    let external = args.etcd_endpoints.is_some() || cfg.master_server.registry_address.is_some();
    let (member, client): (Option<Member>, Arc<dyn KvClient>) = if external {
        tracing::info!(endpoints = ?settings.registry, "using an external store; no member embedded");
        (
            None,
            remote_client(&settings.registry, settings.client_timeout)?,
        )
    } else {
        let member = start_embedded(&args.store).await?;
        let client: Arc<dyn KvClient> = Arc::new(LocalClient::from_member(&member));
        (Some(member), client)
    };
    let master = match Master::start(mcfg, client).await {
        Ok(m) => m,
        Err(e) => {
            if let Some(m) = member {
                let _ = m.shutdown().await;
            }
            return Err(e.into());
        }
    };
    let store = match &member {
        Some(m) => format!("embedded, client http://{}", m.client_addr()),
        None => format!("external {}", settings.registry.join(",")),
    };
    print_line(&format!(
        "crawler master ready: {} grpc {} http {} store {}",
        master.election_value(),
        master.grpc_addr(),
        master
            .http_addr()
            .map_or_else(|| "-".to_string(), |a| a.to_string()),
        store
    ));
    wait_for_signal().await;
    tracing::info!(target: "crawler::master", "shutting down");
    master.shutdown().await;
    if let Some(m) = member {
        m.shutdown().await?;
    }
    Ok(())
}
