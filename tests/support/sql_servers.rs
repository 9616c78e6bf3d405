//! Real database servers for the results sink tests: a PostgreSQL (`initdb` + `postgres`) or
//! MariaDB (`mariadb-install-db` + `mariadbd`) in a temp dir on a free port, killed on drop.
//! Either can be killed with SIGKILL and restarted on the same data and port.
//!
//! A missing server binary fails the test with the package to install (`scripts/test.sh`
//! installs both). PostgreSQL refuses to run as root: as root (CI) it runs as `nobody` through
//! `setpriv`, which execs, so the pid we hold is the postmaster's. MariaDB runs as root with
//! `--user=root`, without grant tables (any user, no password; the DSN says `root`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sqlx::Connection as _;

use super::ports::free_port;
use super::process::signal;
use super::wait::wait_until;

/// How long a server may take to accept connections.
const READY_WAIT: Duration = Duration::from_secs(60);
/// Database the MariaDB DSN names (created at start).
const MARIADB_DATABASE: &str = "crawler";

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    MariaDb,
}

/// A database server process of this test.
pub struct SqlServer {
    engine: Engine,
    /// The server binary and its arguments (to restart it the same way).
    command: Vec<String>,
    as_nobody: bool,
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `name` in `PATH`, else in one of `dirs`.
fn find_bin(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(dirs.iter().cloned())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Debian's versioned PostgreSQL directories, newest first.
fn postgres_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.reverse();
    dirs
}

fn run_setup(cmd: &mut Command, what: &str, log: &Path) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::write(log, &text);
    assert!(out.status.success(), "{what} failed: {text}");
}

/// `cmd` run as `nobody` when `as_nobody` (setpriv execs: the pid stays the command's).
fn command(args: &[String], as_nobody: bool) -> Command {
    if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .args(args);
        c
    } else {
        let mut c = Command::new(&args[0]);
        c.args(&args[1..]);
        c
    }
}

impl SqlServer {
    /// Start a PostgreSQL server and wait until it accepts connections.
    pub async fn postgres() -> Self {
        let dirs = postgres_dirs();
        let (Some(initdb), Some(postgres)) =
            (find_bin("initdb", &dirs), find_bin("postgres", &dirs))
        else {
            panic!(
                "PostgreSQL server binaries (initdb, postgres) not found in PATH or \
                 /usr/lib/postgresql/*/bin: install the `postgresql` package \
                 (`apt-get install postgresql`; scripts/test.sh does it)"
            );
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let as_nobody = is_root();
        if as_nobody {
            // The data dir must belong to the server's user.
            let st = Command::new("chown")
                .args(["nobody:nogroup", &dir.path().display().to_string()])
                .status()
                .expect("chown");
            assert!(st.success(), "chown the PostgreSQL dir to nobody");
        }
        let data = dir.path().join("data").display().to_string();
        let init = [
            initdb.display().to_string(),
            "-D".into(),
            data.clone(),
            "-U".into(),
            "postgres".into(),
            "--auth=trust".into(),
            "-E".into(),
            "UTF8".into(),
            "--no-sync".into(),
        ];
        run_setup(
            &mut command(&init, as_nobody),
            "initdb",
            &dir.path().join("initdb.log"),
        );
        let port = free_port();
        let command = vec![
            postgres.display().to_string(),
            "-D".into(),
            data,
            "-p".into(),
            port.to_string(),
            "-k".into(),
            dir.path().display().to_string(),
            "-c".into(),
            "listen_addresses=127.0.0.1".into(),
            // Durability against a machine crash is not under test (a killed server recovers
            // from its WAL either way); syncing would only slow the tests down.
            "-c".into(),
            "fsync=off".into(),
        ];
        let mut s = Self {
            engine: Engine::Postgres,
            command,
            as_nobody,
            child: None,
            port,
            dir,
        };
        s.start_and_wait().await;
        s
    }

    /// Start a MariaDB server with an empty database `crawler` and wait until it accepts
    /// connections.
    pub async fn mariadb() -> Self {
        let dirs = [PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")];
        let (Some(install), Some(server)) = (
            find_bin("mariadb-install-db", &dirs),
            find_bin("mariadbd", &dirs),
        ) else {
            panic!(
                "MariaDB server binaries (mariadb-install-db, mariadbd) not found in PATH, \
                 /usr/sbin or /usr/bin: install the `mariadb-server` package \
                 (`apt-get install mariadb-server`; scripts/test.sh does it)"
            );
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let root = is_root();
        let data = dir.path().join("data").display().to_string();
        let mut init = Command::new(install);
        init.args([
            "--no-defaults",
            &format!("--datadir={data}"),
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ]);
        if root {
            init.arg("--user=root");
        }
        run_setup(
            &mut init,
            "mariadb-install-db",
            &dir.path().join("install.log"),
        );
        let port = free_port();
        let mut command = vec![
            server.display().to_string(),
            "--no-defaults".into(),
            format!("--datadir={data}"),
            format!("--socket={}", dir.path().join("sock").display()),
            format!("--pid-file={}", dir.path().join("pid").display()),
            format!("--port={port}"),
            "--bind-address=127.0.0.1".into(),
            "--skip-grant-tables".into(),
            "--skip-log-bin".into(),
            "--innodb-buffer-pool-size=32M".into(),
        ];
        if root {
            command.push("--user=root".into());
        }
        let mut s = Self {
            engine: Engine::MariaDb,
            command,
            as_nobody: false,
            child: None,
            port,
            dir,
        };
        s.start_and_wait().await;
        let url = format!("mysql://root@127.0.0.1:{port}");
        let mut c = sqlx::MySqlConnection::connect(&url)
            .await
            .expect("connect to MariaDB");
        sqlx::query(&format!("CREATE DATABASE {MARIADB_DATABASE}"))
            .execute(&mut c)
            .await
            .expect("create database");
        let _ = c.close().await;
        s
    }

    /// The DSN of the server's database.
    pub fn dsn(&self) -> String {
        match self.engine {
            Engine::Postgres => format!("postgres://postgres@127.0.0.1:{}/postgres", self.port),
            Engine::MariaDb => format!("mysql://root@127.0.0.1:{}/{MARIADB_DATABASE}", self.port),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Whether a fresh connection works (to the server: MariaDB's database may not exist yet).
    async fn accepts(&self) -> bool {
        let connect = async {
            match self.engine {
                Engine::Postgres => sqlx::PgConnection::connect(&self.dsn()).await.is_ok(),
                Engine::MariaDb => {
                    let url = format!("mysql://root@127.0.0.1:{}", self.port);
                    sqlx::MySqlConnection::connect(&url).await.is_ok()
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), connect)
            .await
            .unwrap_or(false)
    }

    /// Start the server process and wait until it accepts connections; a server that exits
    /// meanwhile (e.g. the old one's processes still hold its lock after a kill) is started
    /// again until the deadline.
    async fn start_and_wait(&mut self) {
        let deadline = tokio::time::Instant::now() + READY_WAIT;
        loop {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.log_path())
                .expect("server log");
            let err = log.try_clone().expect("server log");
            let child = command(&self.command, self.as_nobody)
                .stdin(Stdio::null())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(err))
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", self.command[0]));
            self.child = Some(child);
            loop {
                if self.accepts().await {
                    return;
                }
                let exited = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{:?} not accepting connections within {READY_WAIT:?}; log:\n{}",
                    self.engine,
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                );
                if exited.is_some() {
                    self.child = None;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// The server's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL the server (no shutdown of any kind) and wait until it no longer accepts
    /// connections.
    pub async fn kill_9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let deadline = tokio::time::Instant::now() + READY_WAIT;
        while self.accepts().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?} still accepts connections after SIGKILL",
                self.engine
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Start the server again on the same data and port (after [`SqlServer::kill_9`]).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is still running");
        self.start_and_wait().await;
    }
}

impl Drop for SqlServer {
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        if self.engine == Engine::Postgres {
            // Immediate shutdown: the postmaster takes its backends down with it.
            signal(c.id(), "QUIT");
            if wait_until(Duration::from_secs(5), || c.try_wait().ok().flatten()).is_some() {
                return;
            }
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

pub fn engine_of(dsn: &str) -> Engine {
    if dsn.starts_with("postgres") {
        Engine::Postgres
    } else {
        Engine::MariaDb
    }
}

/// What a table holds for `task`: (rows, distinct urls, the `n` fields, the workers).
pub async fn stored(
    db: &SqlServer,
    table: &str,
    task: &str,
) -> (i64, i64, BTreeSet<u64>, BTreeSet<String>) {
    let dsn = db.dsn();
    let (counts, ns, workers) = match engine_of(&dsn) {
        Engine::Postgres => {
            let mut c = sqlx::PgConnection::connect(&dsn).await.expect("connect");
            let counts: (i64, i64) = sqlx::query_as(&format!(
                "SELECT count(*), count(DISTINCT url) FROM {table} WHERE task = $1"
            ))
            .bind(task)
            .fetch_one(&mut c)
            .await
            .expect("count");
            let ns: Vec<(i64, i32)> = sqlx::query_as(&format!(
                "SELECT (fields->>'n')::bigint, item_index FROM {table} WHERE task = $1"
            ))
            .bind(task)
            .fetch_all(&mut c)
            .await
            .expect("fields");
            let workers: Vec<(String,)> = sqlx::query_as(&format!(
                "SELECT DISTINCT worker FROM {table} WHERE task = $1"
            ))
            .bind(task)
            .fetch_all(&mut c)
            .await
            .expect("workers");
            (counts, ns, workers)
        }
        Engine::MariaDb => {
            let mut c = sqlx::MySqlConnection::connect(&dsn).await.expect("connect");
            let counts: (i64, i64) = sqlx::query_as(&format!(
                "SELECT count(*), count(DISTINCT url) FROM {table} WHERE task = ?"
            ))
            .bind(task)
            .fetch_one(&mut c)
            .await
            .expect("count");
            let ns: Vec<(i64, i32)> = sqlx::query_as(&format!(
                "SELECT CAST(JSON_VALUE(fields, '$.n') AS SIGNED), item_index FROM {table} \
                 WHERE task = ?"
            ))
            .bind(task)
            .fetch_all(&mut c)
            .await
            .expect("fields");
            let workers: Vec<(String,)> = sqlx::query_as(&format!(
                "SELECT DISTINCT worker FROM {table} WHERE task = ?"
            ))
            .bind(task)
            .fetch_all(&mut c)
            .await
            .expect("workers");
            (counts, ns, workers)
        }
    };
    for (_, index) in &ns {
        assert_eq!(*index, 0, "one item per page");
    }
    let ns = ns
        .into_iter()
        .map(|(n, _)| u64::try_from(n).expect("n is not negative"))
        .collect();
    (
        counts.0,
        counts.1,
        ns,
        workers.into_iter().map(|(w,)| w).collect(),
    )
}
