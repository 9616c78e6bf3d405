//! `crawler master` child processes: one master ([`MasterProc`]), three masters each embedding
//! one member of a three-member store ([`spawn_three_masters`]), and the wait for a ready leader.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::master_env::try_http;
use super::ports::free_port;

/// How long a master process may take to print its ready line (an embedded member elects first).
pub const START_DEADLINE: Duration = Duration::from_secs(40);

/// One `crawler master` process, killed on drop.
pub struct MasterProc {
    pub child: Child,
    pub id: u64,
    pub http: SocketAddr,
    pub log: PathBuf,
    pub lines: mpsc::Receiver<String>,
}

impl MasterProc {
    pub fn spawn(id: u64, config: &Path, dir: &Path, extra: &[String]) -> MasterProc {
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.join(format!("master{id}.log"));
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_crawler"))
            .arg("master")
            .arg(format!("--id={id}"))
            .arg(format!("--http={http}"))
            .arg(format!("--grpc={grpc}"))
            .arg("--config")
            .arg(config)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("spawn crawler master");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        MasterProc {
            child,
            id,
            http,
            log,
            lines,
        }
    }

    /// Wait for `crawler master ready:` on stdout.
    pub fn wait_started(&mut self) {
        let deadline = std::time::Instant::now() + START_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with("crawler master ready:") => return,
                Ok(_) => {}
                Err(_) => panic!(
                    "master {} printed no ready line; log:\n{}",
                    self.id,
                    self.log_tail()
                ),
            }
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `(leader, ready)` from `GET /health`; `None` when unreachable.
    pub async fn health(&self) -> Option<(bool, bool)> {
        let (status, body) = try_http(self.http, "GET", "/health", None).await?;
        (status == 200).then(|| {
            (
                body["leader"].as_bool().unwrap_or(false),
                body["ready"].as_bool().unwrap_or(false),
            )
        })
    }

    /// Status of `GET /readyz`; `None` when unreachable.
    pub async fn readyz(&self) -> Option<u16> {
        try_http(self.http, "GET", "/readyz", None)
            .await
            .map(|(status, _)| status)
    }

    pub fn kill9(&mut self) {
        // std's kill sends SIGKILL.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MasterProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Index of the ready leader among `ms` (skipping `dead`), waiting up to `within`.
pub async fn ready_leader(ms: &[MasterProc], dead: Option<usize>, within: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        for (i, m) in ms.iter().enumerate() {
            if Some(i) != dead && m.health().await == Some((true, true)) {
                return i;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            let logs: Vec<String> = ms
                .iter()
                .map(|m| format!("--- master {}:\n{}", m.id, m.log_tail()))
                .collect();
            panic!("no ready leader within {within:?}\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The embedded member's flags: data dir, and client and peer URLs on 127.0.0.1 ports.
pub fn member_args(data_dir: &Path, client_port: u16, peer_port: u16) -> Vec<String> {
    let (c, p) = (client_port, peer_port);
    vec![
        "--data-dir".to_string(),
        data_dir.display().to_string(),
        "--listen-client-urls".into(),
        format!("http://127.0.0.1:{c}"),
        "--advertise-client-urls".into(),
        format!("http://127.0.0.1:{c}"),
        "--listen-peer-urls".into(),
        format!("http://127.0.0.1:{p}"),
        "--initial-advertise-peer-urls".into(),
        format!("http://127.0.0.1:{p}"),
    ]
}

/// Three masters, each embedding one member of a new three-member store; the store's client
/// URLs.
pub fn spawn_three_masters(dir: &Path, config: &Path) -> (Vec<MasterProc>, Vec<String>) {
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("n{}=http://127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut ms: Vec<MasterProc> = ports
        .iter()
        .enumerate()
        .map(|(i, (c, p))| {
            let n = i + 1;
            let mut args = member_args(&dir.join(format!("n{n}")), *c, *p);
            let more: Vec<String> = [
                "--name".to_string(),
                format!("n{n}"),
                "--initial-cluster".into(),
                cluster.clone(),
                "--initial-cluster-state".into(),
                "new".into(),
                "--initial-cluster-token".into(),
                "master-process-test".into(),
                "--heartbeat-interval".into(),
                "100".into(),
                "--election-timeout".into(),
                "1000".into(),
            ]
            .into();
            args.extend(more);
            MasterProc::spawn(n as u64, config, dir, &args)
        })
        .collect();
    for m in &mut ms {
        m.wait_started();
    }
    let endpoints = ports
        .iter()
        .map(|(c, _)| format!("http://127.0.0.1:{c}"))
        .collect();
    (ms, endpoints)
}
