//! `crawler task ...`: the task API from the command line, against any master's HTTP API.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::Value;

/// Flags of `crawler task`.
#[derive(Debug, Args)]
pub struct TaskArgs {
    /// A master's HTTP API (any master: writes are forwarded to the leader).
    #[arg(long, env = "CRAWLER_MASTER", default_value = "http://127.0.0.1:8081")]
    pub master: String,
    /// The masters' API token, when they require one.
    #[arg(long, env = "CRAWLER_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: TaskCommand,
}

/// `crawler task` subcommands.
#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Add tasks from a spec file: TOML (a task table, or `[[Tasks]]` tables) or JSON.
    Add {
        /// The spec file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Replace a task's spec (its run restarts from its checkpoint).
    Put {
        /// Task name.
        name: String,
        /// The spec file (TOML or JSON, one task).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List every task with its state and progress.
    Ls {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one task's spec and status (JSON).
    Get {
        /// Task name.
        name: String,
    },
    /// Stop and remove a task.
    Rm {
        /// Task name.
        name: String,
        /// Remove its checkpoints too (else adding it again resumes from them).
        #[arg(long)]
        purge: bool,
    },
    /// Stop a task, keeping its checkpoint.
    Pause {
        /// Task name.
        name: String,
    },
    /// Run a paused task again, from its checkpoint.
    Resume {
        /// Task name.
        name: String,
    },
    /// Forget a task's progress and crawl again from its seeds.
    Recrawl {
        /// Task name.
        name: String,
    },
}

/// Why a task command failed.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}")]
    Input(String),
    #[error("cannot reach the master at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the master answered {status}: {message}")]
    Refused { status: u16, message: String },
    /// Already reported, one line per task.
    #[error("{0} of the tasks could not be added")]
    Some(usize),
}

/// The specs in a file: JSON (an object, or an array of them) or TOML (a task table, or
/// `[[Tasks]]`), as JSON values for the API.
fn read_specs(path: &Path) -> Result<Vec<Value>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Input(format!("{}: {e}", path.display())))?;
    let bad = |e: &dyn std::fmt::Display| CliError::Input(format!("{}: {e}", path.display()));
    let toml = |text: &str| -> Result<Value, CliError> {
        let t: toml::Table = toml::from_str(text).map_err(|e| bad(&e))?;
        serde_json::to_value(t).map_err(|e| bad(&e))
    };
    let value: Value = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => serde_json::from_str(&text).map_err(|e| bad(&e))?,
        Some("toml") => toml(&text)?,
        // Neither: JSON if it parses as JSON, else TOML (`[[Tasks]]` starts like a JSON array).
        _ => match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(_) => toml(&text)?,
        },
    };
    let specs = match value {
        Value::Array(a) => a,
        Value::Object(mut o) if o.contains_key("Tasks") => match o.remove("Tasks") {
            Some(Value::Array(a)) => a,
            _ => {
                return Err(CliError::Input(format!(
                    "{}: Tasks must be a list of tables",
                    path.display()
                )))
            }
        },
        v @ Value::Object(_) => vec![v],
        _ => {
            return Err(CliError::Input(format!(
                "{}: expected a task table",
                path.display()
            )))
        }
    };
    if specs.is_empty() {
        return Err(CliError::Input(format!(
            "{}: no task in it",
            path.display()
        )));
    }
    Ok(specs)
}

/// A small client of the master's HTTP API.
struct Api {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Api {
    fn new(master: &str, token: Option<String>) -> Self {
        let base = if master.contains("://") {
            master.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", master.trim_end_matches('/'))
        };
        Self {
            base,
            http: reqwest::Client::new(),
            token,
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.map_err(|source| CliError::Unreachable {
            url: self.base.clone(),
            source,
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|source| CliError::Unreachable {
            url: self.base.clone(),
            source,
        })?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            let message = value["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(CliError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        Ok(value)
    }
}

/// A path segment: task names may hold any character but '/'.
fn seg(name: &str) -> String {
    url::form_urlencoded::byte_serialize(name.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn num(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `crawler task ls` as a table.
fn print_table(tasks: &[Value]) {
    let rows: Vec<[String; 9]> = tasks
        .iter()
        .map(|t| {
            [
                num(&t["name"]),
                num(&t["state"]),
                num(&t["worker"]),
                num(&t["pages"]),
                num(&t["items"]),
                num(&t["errors"]),
                num(&t["frontier"]),
                num(&t["pages_per_sec"]),
                num(&t["last_checkpoint"]),
            ]
        })
        .collect();
    let head = [
        "NAME",
        "STATE",
        "WORKER",
        "PAGES",
        "ITEMS",
        "ERRORS",
        "FRONTIER",
        "PAGES/S",
        "LAST CHECKPOINT",
    ];
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (c, w) in cells.iter().zip(&widths) {
            s.push_str(&format!("{c:<w$}  ", w = *w));
        }
        println!("{}", s.trim_end());
    };
    line(head.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn summary(t: &Value) -> String {
    let s = &t["status"];
    format!(
        "task {}: {}{}{}",
        num(&s["name"]),
        num(&s["state"]),
        s["worker"]
            .as_str()
            .map(|w| format!(" on {w}"))
            .unwrap_or_default(),
        s["detail"]
            .as_str()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default()
    )
}

async fn run(args: TaskArgs) -> Result<(), CliError> {
    use reqwest::Method;
    let api = Api::new(&args.master, args.api_token.clone());
    match args.command {
        TaskCommand::Add { file } => {
            let specs = read_specs(&file)?;
            if specs.len() == 1 {
                let t = api
                    .call(Method::POST, "/crawler/tasks", Some(&specs[0]))
                    .await?;
                println!("added {}", summary(&t));
                return Ok(());
            }
            let mut failed = 0;
            for spec in specs {
                match api.call(Method::POST, "/crawler/tasks", Some(&spec)).await {
                    Ok(t) => println!("added {}", summary(&t)),
                    Err(e @ CliError::Unreachable { .. }) => return Err(e),
                    Err(e) => {
                        eprintln!("task {}: {e}", num(&spec["Name"]));
                        failed += 1;
                    }
                }
            }
            if failed > 0 {
                return Err(CliError::Some(failed));
            }
            Ok(())
        }
        TaskCommand::Put { name, file } => {
            let mut specs = read_specs(&file)?;
            if specs.len() != 1 {
                return Err(CliError::Input(format!(
                    "{}: put takes exactly one task",
                    file.display()
                )));
            }
            let spec = specs.remove(0);
            let t = api
                .call(
                    Method::PUT,
                    &format!("/crawler/tasks/{}", seg(&name)),
                    Some(&spec),
                )
                .await?;
            println!("replaced {}", summary(&t));
            Ok(())
        }
        TaskCommand::Ls { json } => {
            let v = api.call(Method::GET, "/crawler/tasks", None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print_table(v["tasks"].as_array().map(Vec::as_slice).unwrap_or_default());
            }
            Ok(())
        }
        TaskCommand::Get { name } => {
            let v = api
                .call(Method::GET, &format!("/crawler/tasks/{}", seg(&name)), None)
                .await?;
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            Ok(())
        }
        TaskCommand::Rm { name, purge } => {
            let q = if purge { "?purge=true" } else { "" };
            api.call(
                Method::DELETE,
                &format!("/crawler/tasks/{}{q}", seg(&name)),
                None,
            )
            .await?;
            println!(
                "task {name} deleted{}",
                if purge { " and purged" } else { "" }
            );
            Ok(())
        }
        TaskCommand::Pause { name } => act(&api, "pause", &name).await,
        TaskCommand::Resume { name } => act(&api, "resume", &name).await,
        TaskCommand::Recrawl { name } => act(&api, "recrawl", &name).await,
    }
}

/// `pause`, `resume` or `recrawl`.
async fn act(api: &Api, action: &str, name: &str) -> Result<(), CliError> {
    let t = api
        .call(
            reqwest::Method::POST,
            &format!("/crawler/tasks/{}/{action}", seg(name)),
            None,
        )
        .await?;
    println!("{action}: {}", summary(&t));
    Ok(())
}

/// Entry point of `crawler task`.
pub fn main(args: TaskArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("crawler task: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crawler task: {e}");
            ExitCode::FAILURE
        }
    }
}
