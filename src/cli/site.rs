//! `crawler site` and `crawler demo-site`: serve a site to crawl.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Args;

use super::process::{block_on, init_logging, wait_for_signal};

/// Flags of `crawler demo-site`.
#[derive(Debug, Args)]
pub struct DemoSiteArgs {
    /// Address to serve on (the sample config's tasks point at 127.0.0.1:8078).
    #[arg(long, default_value = crate::crawl::demo_site::DEFAULT_ADDR)]
    pub listen: SocketAddr,
}

/// Flags of `crawler site`.
#[derive(Debug, Args)]
pub struct SiteArgs {
    /// Addresses to serve on, comma-separated, one per host (`ip:port`; port 0: any free).
    #[arg(long, default_value = "127.0.0.1:8090", value_delimiter = ',')]
    pub listen: Vec<SocketAddr>,
    /// New pages each page links to.
    #[arg(long, default_value_t = 10)]
    pub fanout: u64,
    /// Pages that exist.
    #[arg(long, default_value_t = 1_000_000)]
    pub pages: u64,
    /// Approximate size of a page, bytes.
    #[arg(long, default_value_t = 2048)]
    pub page_bytes: usize,
    /// Delay before each answer, milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
}

/// Entry point of `crawler site`.
pub fn main_site(args: SiteArgs) -> ExitCode {
    init_logging("warn");
    block_on("site", serve_site(args))
}

/// Entry point of `crawler demo-site`.
pub fn main_demo_site(args: DemoSiteArgs) -> ExitCode {
    init_logging("warn");
    block_on("demo-site", serve_demo_site(args))
}

/// `crawler site`: serve until Ctrl-C or SIGTERM.
async fn serve_site(args: SiteArgs) -> anyhow::Result<()> {
    use crate::crawl::synthetic_site::{SiteOptions, SyntheticSite};
    let opts = SiteOptions {
        fanout: args.fanout,
        pages: args.pages,
        page_bytes: args.page_bytes,
        latency: std::time::Duration::from_millis(args.latency_ms),
    };
    let site = SyntheticSite::start(opts, &args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {:?}: {e}", args.listen))?;
    println!("synthetic site ready: {}", site.seed());
    let _ = std::io::stdout().flush();
    wait_for_signal().await;
    Ok(())
}

/// `crawler demo-site`: serve until Ctrl-C or SIGTERM.
async fn serve_demo_site(args: DemoSiteArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr()?;
    let server = crate::crawl::demo_site::serve(listener);
    println!("demo site ready: http://{addr}/books/");
    let _ = std::io::stdout().flush();
    wait_for_signal().await;
    server.abort();
    Ok(())
}
