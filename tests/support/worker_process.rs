//! A `crawler worker` child process for the worker and crawl tests: spawned with a config file
//! against a store endpoint, ready once it prints its ready line, killed (SIGKILL) on drop.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a worker may take to print its ready line.
const READY_WAIT: Duration = Duration::from_secs(30);

/// A `crawler worker` child process, killed on drop.
pub struct WorkerProcess {
    pub child: Child,
    /// The ready line it printed.
    pub ready: String,
}

impl WorkerProcess {
    /// Start `crawler worker --id <id>` registering at `endpoint` with a lease of `ttl` seconds.
    pub fn spawn(id: &str, endpoint: &str, ttl: u64, config: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crawler"))
            .args([
                "worker",
                "--id",
                id,
                "--http",
                "127.0.0.1:0",
                "--grpc",
                "127.0.0.1:0",
                "--registry",
                endpoint,
                "--register-ttl",
                &ttl.to_string(),
                "--config",
                config.to_str().expect("utf-8 path"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn crawler worker");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining so the child never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let ready = loop {
            match rx.recv_timeout(READY_WAIT) {
                Ok(line) if line.starts_with("crawler worker ready:") => break line,
                Ok(_) => continue,
                Err(_) => {
                    let _ = child.kill();
                    panic!("crawler worker printed no ready line within {READY_WAIT:?}");
                }
            }
        };
        Self { child, ready }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap it.
    pub fn kill_9(&mut self) {
        self.child.kill().expect("kill -9");
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
