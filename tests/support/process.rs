//! Child processes a test started: signals, and a background process whose output is collected.
//! Every process is killed (SIGKILL) when its handle drops; nothing else is ever signalled.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::wait::wait_until;

/// Send signal `sig` (`TERM`, `STOP`, ...) to `pid`, a process the test started, with the `kill`
/// command (avoids a libc dependency).
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// An etcdctl process running in the background; its stdout lines are collected.
pub struct Bg {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<String>>,
    /// What was run, for messages.
    pub what: String,
}

impl Bg {
    /// Spawn any command with piped stdout/stderr.
    pub fn spawn(cmd: &mut Command, what: String) -> Bg {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn background process");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("stdout");
        let l2 = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                l2.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let mut stderr = child.stderr.take().expect("stderr");
        let e2 = err.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match stderr.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => e2
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
        });
        Bg {
            child: Some(child),
            lines,
            err,
            what,
        }
    }

    /// Lines printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stderr so far.
    pub fn stderr(&self) -> String {
        self.err.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Wait until at least `n` lines were printed and return the first `n`.
    pub fn wait_lines(&self, n: usize, timeout: Duration) -> Vec<String> {
        match wait_until(timeout, || {
            let l = self.lines();
            (l.len() >= n).then(|| l[..n].to_vec())
        }) {
            Some(l) => l,
            None => panic!(
                "{}: expected {n} lines within {timeout:?}, got {:?}; stderr: {}",
                self.what,
                self.lines(),
                self.stderr()
            ),
        }
    }

    /// Wait until the printed lines contain `needle` as a whole line.
    pub fn wait_line(&self, needle: &str, timeout: Duration) {
        if wait_until(timeout, || {
            self.lines().iter().any(|l| l == needle).then_some(())
        })
        .is_none()
        {
            panic!(
                "{}: line {needle:?} not printed within {timeout:?}; got {:?}; stderr: {}",
                self.what,
                self.lines(),
                self.stderr()
            );
        }
    }

    /// Wait until stderr contains `needle`.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) {
        if wait_until(timeout, || self.stderr().contains(needle).then_some(())).is_none() {
            panic!(
                "{}: {needle:?} not on stderr within {timeout:?}; stdout {:?}; stderr: {}",
                self.what,
                self.lines(),
                self.stderr()
            );
        }
    }

    /// OS pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Send SIGTERM (etcdctl elect/lock then release their session) and wait for exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        signal(c.id(), "TERM");
        match wait_until(timeout, || c.try_wait().ok().flatten()) {
            Some(st) => Some(st),
            None => {
                let _ = c.kill();
                c.wait().ok()
            }
        }
    }

    /// Wait for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let c = self.child.as_mut().expect("process already reaped");
        let st = wait_until(timeout, || c.try_wait().ok().flatten());
        match st {
            Some(st) => {
                self.child = None;
                st
            }
            None => panic!(
                "{} did not exit within {timeout:?}; stdout {:?}; stderr {}",
                self.what,
                self.lines(),
                self.stderr()
            ),
        }
    }

    /// Exit status if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Write `content` to a file (test helper).
pub fn write_file(path: &Path, content: &str) {
    let mut f = File::create(path).expect("create file");
    f.write_all(content.as_bytes()).expect("write file");
}
