//! A single-member store of our own inside the test process: the fixture the worker and crawl
//! tests share.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use crawler::cli::{Cli, Command as CliCommand};
use crawler::client::local::LocalClient;
use crawler::client::KvClient;
use crawler::server::member::Member;

use super::ports::free_port;

/// How long a fresh member may take to elect itself.
const LEADER_WAIT: Duration = Duration::from_secs(30);

/// A single-member store of our own in this process, in a temp dir.
pub struct OurStore {
    member: Option<Member>,
    _dir: tempfile::TempDir,
}

impl OurStore {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let peer = format!("http://127.0.0.1:{}", free_port());
        let data = dir.path().join("data");
        let cli = Cli::try_parse_from([
            "crawler",
            "store",
            "--name",
            "t",
            "--data-dir",
            data.to_str().expect("utf-8 path"),
            "--listen-client-urls",
            "http://127.0.0.1:0",
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .expect("store flags");
        let CliCommand::Store(args) = cli.command else {
            panic!("not the store command");
        };
        let member = crawler::services::start_member(args.member_config().expect("member config"))
            .await
            .expect("member starts");
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        while member.raft().status().leader.is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "member never became leader"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            member: Some(member),
            _dir: dir,
        }
    }

    pub fn member(&self) -> &Member {
        self.member.as_ref().expect("running")
    }

    pub fn local(&self) -> Arc<dyn KvClient> {
        Arc::new(LocalClient::from_member(self.member()))
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.member().client_addr())
    }

    pub async fn stop(mut self) {
        if let Some(m) = self.member.take() {
            m.shutdown().await.expect("member shutdown");
        }
    }
}
