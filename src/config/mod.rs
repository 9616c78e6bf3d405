//! The configuration file (`crawler.toml`), in the spirit of the Go original's `config.toml`.
//!
//! ```toml
//! logLevel = "info"
//!
//! [[Tasks]]
//! Name = "douban_book_list"
//! URLs = ["https://book.douban.com/tag/"]
//! WaitTime = 2
//! MaxDepth = 5
//! Limits = [{ EventCount = 1, EventDur = 3 }, { EventCount = 20, EventDur = 60 }]
//!
//! [GRPCServer]          # the worker
//! RegistryAddress = "127.0.0.1:2379"
//! RegisterTTL = 10
//!
//! [MasterServer]
//! HTTPListenAddress = ":8081"
//! ```
//!
//! Field names are exactly the original's PascalCase ones; unknown fields are rejected so a typo
//! is an error, not a silently ignored setting. Every error names the file, and the field (for
//! a parse error toml's message carries the line, column and offending key). Command-line flags
//! override the file ([`ServerOverrides`]); what neither sets gets a default ([`Role`]).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::model::resource::{MASTER_SERVICE, WORKER_SERVICE};
use crate::model::sink::SinkConfig;
use crate::model::task::TaskConfig;
use crate::util::url::{parse_endpoints, parse_listen};

/// Registration TTL when neither the file nor a flag sets one, seconds.
pub const DEFAULT_REGISTER_TTL_SECS: u64 = 10;
/// Client (store request) timeout when not set, seconds.
pub const DEFAULT_CLIENT_TIMEOUT_SECS: u64 = 10;
/// Master election session TTL when not set, seconds (the Go project's 5 s).
pub const DEFAULT_SESSION_TTL_SECS: u64 = 5;
/// Default store endpoint of workers (and of `--etcd-endpoints`-less tools).
pub const DEFAULT_REGISTRY_ADDRESS: &str = "127.0.0.1:2379";

/// The sample configuration shipped at the repository root; `crawler dev` uses it when no
/// `--config` is given.
pub const SAMPLE_CONFIG: &str = include_str!("../../crawler.toml");
/// How the built-in sample is named in errors and logs.
pub const SAMPLE_CONFIG_ORIGIN: &str = "<built-in crawler.toml>";

/// Why a configuration could not be loaded. Each variant names the file (`origin`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable).
    // The I/O error is part of the message and deliberately not a `source`: a report that
    // prints the chain would say it twice.
    #[error("{origin}: cannot read config file: {error}")]
    Read {
        /// The file.
        origin: String,
        /// The I/O failure.
        error: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown field or a field of the wrong type.
    #[error("{origin}: {message}")]
    Parse {
        /// The file.
        origin: String,
        /// toml's message: line, column, the offending key and what was expected.
        message: String,
    },
    /// A field parsed but its value is not acceptable.
    #[error("{origin}: {field}: {message}")]
    Invalid {
        /// The file (or `--flag` when the value came from the command line).
        origin: String,
        /// The field's path, e.g. `Tasks[1].Limits[0].EventDur`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

fn invalid(origin: &str, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.to_string(),
        field: field.into(),
        message: message.into(),
    }
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Log filter (`debug`, `info`, `warn`, `error`, or a `tracing` filter); flags and `RUST_LOG`
    /// win over it.
    #[serde(rename = "logLevel", default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// Crawl tasks: the master's seeds, and what a worker runs for a resource of that name.
    #[serde(rename = "Tasks", default)]
    pub tasks: Vec<TaskConfig>,
    /// Directory a worker writes crawl results to (`<DataDir>/<task>.jsonl`); default
    /// `crawler-data` (`crawler dev`: `<its data dir>/results`).
    #[serde(rename = "DataDir", default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,
    /// Where items go by default (`[Sink]`; a task's own `Sink` wins); none: JSON lines under
    /// `DataDir`.
    #[serde(rename = "Sink", default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<SinkConfig>,
    /// Settings of `crawler master`.
    #[serde(rename = "MasterServer", default)]
    pub master_server: ServerConfig,
    /// Settings of `crawler worker` (the original's name for the worker's server section).
    #[serde(rename = "GRPCServer", default)]
    pub grpc_server: ServerConfig,
}

/// Accept `ID = "2"` and `ID = 2` alike.
fn string_or_int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        S(String),
        I(i64),
    }
    Ok(Option::<Id>::deserialize(d)?.map(|id| match id {
        Id::S(s) => s,
        Id::I(i) => i.to_string(),
    }))
}

/// `[MasterServer]` / `[GRPCServer]`: a server's identity, listeners and registry settings.
/// Every field is optional; [`ServerConfig::resolve`] fills defaults per [`Role`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// HTTP API listen address, `host:port` or `:port` (all interfaces).
    #[serde(rename = "HTTPListenAddress", default)]
    pub http_listen_address: Option<String>,
    /// gRPC listen address, `host:port` or `:port` (all interfaces).
    #[serde(rename = "GRPCListenAddress", default)]
    pub grpc_listen_address: Option<String>,
    /// Address registered for the gRPC server (`host:port`, or `host` to keep the bound port);
    /// default `127.0.0.1:<port>` for a wildcard listener, else the listen address.
    #[serde(rename = "AdvertiseAddress", default)]
    pub advertise_address: Option<String>,
    /// Server id: the worker's node suffix, the master's snowflake node id (0..=1023).
    #[serde(rename = "ID", default, deserialize_with = "string_or_int")]
    pub id: Option<String>,
    /// Store endpoints, comma-separated `host:port` (`:2379` = `127.0.0.1:2379`).
    #[serde(rename = "RegistryAddress", default)]
    pub registry_address: Option<String>,
    /// Registration lease TTL, seconds.
    #[serde(rename = "RegisterTTL", default)]
    pub register_ttl: Option<u64>,
    /// Registration refresh interval, seconds (default a third of the TTL).
    #[serde(rename = "RegisterInterval", default)]
    pub register_interval: Option<u64>,
    /// Timeout of one store request, seconds.
    #[serde(rename = "ClientTimeOut", default)]
    pub client_timeout: Option<u64>,
    /// Service name in the registry.
    #[serde(rename = "Name", default)]
    pub name: Option<String>,
    /// Master election session TTL, seconds (masters only).
    #[serde(rename = "SessionTTL", default)]
    pub session_ttl: Option<u64>,
    /// Move resources to workers that joined later until loads differ by at most one (masters
    /// only; default false).
    #[serde(rename = "Rebalance", default)]
    pub rebalance: Option<bool>,
    /// Times a failed task run is started again (workers only; default 3).
    #[serde(rename = "TaskRetries", default)]
    pub task_retries: Option<u32>,
    /// Seconds before the first retry of a failed run, doubling per retry (workers only;
    /// default 10).
    #[serde(rename = "TaskRetryBackoff", default)]
    pub task_retry_backoff: Option<u64>,
    /// Bearer token the master's HTTP and gRPC APIs require (masters only; `/health` and
    /// `/readyz` stay open). `CRAWLER_API_TOKEN` / `--api-token` override it.
    #[serde(rename = "APIToken", default)]
    pub api_token: Option<String>,
}

/// Retries of a failed task run when the config sets none.
pub const DEFAULT_TASK_RETRIES_AFTER_FAILURE: u32 = 3;
/// Seconds before the first retry of a failed run when the config sets none.
pub const DEFAULT_TASK_RETRY_BACKOFF_SECS: u64 = 10;

/// Values given on the command line; each one that is `Some` wins over the file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerOverrides {
    /// `--id`.
    pub id: Option<String>,
    /// `--http`.
    pub http: Option<String>,
    /// `--grpc`.
    pub grpc: Option<String>,
    /// `--advertise`.
    pub advertise: Option<String>,
    /// `--registry` / `--etcd-endpoints`.
    pub registry: Option<String>,
    /// `--register-ttl` (seconds).
    pub register_ttl: Option<u64>,
}

/// Which server a section configures (selects the defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `crawler master`: HTTP `:8081`, gRPC `:9091`, service `go.micro.server.master`.
    Master,
    /// `crawler worker`: HTTP `:8080`, gRPC `:9090`, service `go.micro.server.worker`.
    Worker,
}

impl Role {
    fn section(self) -> &'static str {
        match self {
            Role::Master => "MasterServer",
            Role::Worker => "GRPCServer",
        }
    }
}

/// A server section with flags applied, defaults filled and every value checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSettings {
    /// Server id (non-empty, no `/` or `|`).
    pub id: String,
    /// Service name in the registry.
    pub name: String,
    /// Where the HTTP API listens.
    pub http_listen: SocketAddr,
    /// Where the gRPC server listens.
    pub grpc_listen: SocketAddr,
    /// Explicit advertised gRPC address (`host:port` or `host`), if any.
    pub advertise: Option<String>,
    /// Store endpoints (`host:port`).
    pub registry: Vec<String>,
    /// Registration lease TTL.
    pub register_ttl: Duration,
    /// Registration refresh interval (`None` = a third of the TTL).
    pub register_interval: Option<Duration>,
    /// Timeout of one store request.
    pub client_timeout: Duration,
    /// Master election session TTL.
    pub session_ttl: Duration,
    /// Masters: rebalance assignments when workers join.
    pub rebalance: bool,
    /// Workers: retries of a failed run.
    pub task_retries: u32,
    /// Workers: pause before the first retry.
    pub task_retry_backoff: Duration,
    /// Masters: the bearer token the APIs require (`None`: open).
    pub api_token: Option<String>,
}

impl ServerSettings {
    /// The id as a number (masters: the snowflake node id).
    pub fn numeric_id(&self) -> Option<u64> {
        self.id.parse().ok()
    }

    /// Registry node id: `<service name>-<id>`, e.g. `go.micro.server.worker-2`.
    pub fn node_id(&self) -> String {
        format!("{}-{}", self.name, self.id)
    }
}

impl ServerConfig {
    /// Apply flags, fill defaults for `role` and check every value. `origin` names the file in
    /// errors (flags are named as `--flag`).
    pub fn resolve(
        &self,
        role: Role,
        flags: &ServerOverrides,
        origin: &str,
    ) -> Result<ServerSettings, ConfigError> {
        let sec = role.section();
        // (value, where it came from) — the flag when given, else the file.
        fn pick<'a, T>(
            flag: &'a Option<T>,
            file: &'a Option<T>,
            flag_name: &str,
            field: String,
            origin: &str,
        ) -> Option<(&'a T, String, String)> {
            match (flag, file) {
                (Some(v), _) => Some((v, "command line".to_string(), format!("--{flag_name}"))),
                (None, Some(v)) => Some((v, origin.to_string(), field)),
                (None, None) => None,
            }
        }
        let (def_http, def_grpc, def_name) = match role {
            Role::Master => (":8081", ":9091", MASTER_SERVICE),
            Role::Worker => (":8080", ":9090", WORKER_SERVICE),
        };

        let id = match pick(&flags.id, &self.id, "id", format!("{sec}.ID"), origin) {
            Some((v, o, f)) => {
                check_id(v).map_err(|m| invalid(&o, f, m))?;
                v.clone()
            }
            None => "1".to_string(),
        };
        if role == Role::Master {
            let ok = id.parse::<u64>().is_ok_and(|n| n <= 1023);
            if !ok {
                let (o, f) = if flags.id.is_some() {
                    ("command line".to_string(), "--id".to_string())
                } else {
                    (origin.to_string(), format!("{sec}.ID"))
                };
                return Err(invalid(
                    &o,
                    f,
                    format!("master id {id:?} must be a number from 0 to 1023 (snowflake node id)"),
                ));
            }
        }
        let name = match &self.name {
            Some(n) if n.trim().is_empty() => {
                return Err(invalid(origin, format!("{sec}.Name"), "must not be empty"))
            }
            Some(n) => n.clone(),
            None => def_name.to_string(),
        };
        let listen = |flag: &Option<String>,
                      file: &Option<String>,
                      flag_name: &str,
                      field: &str,
                      default: &str|
         -> Result<SocketAddr, ConfigError> {
            match pick(flag, file, flag_name, format!("{sec}.{field}"), origin) {
                Some((v, o, f)) => parse_listen(v).map_err(|m| invalid(&o, f, m)),
                None => parse_listen(default).map_err(|m| invalid(origin, field, m)),
            }
        };
        let http_listen = listen(
            &flags.http,
            &self.http_listen_address,
            "http",
            "HTTPListenAddress",
            def_http,
        )?;
        let grpc_listen = listen(
            &flags.grpc,
            &self.grpc_listen_address,
            "grpc",
            "GRPCListenAddress",
            def_grpc,
        )?;
        let advertise = match pick(
            &flags.advertise,
            &self.advertise_address,
            "advertise",
            format!("{sec}.AdvertiseAddress"),
            origin,
        ) {
            Some((v, o, f)) => {
                check_advertise(v).map_err(|m| invalid(&o, f, m))?;
                Some(v.trim().to_string())
            }
            None => None,
        };
        let registry = match pick(
            &flags.registry,
            &self.registry_address,
            "registry",
            format!("{sec}.RegistryAddress"),
            origin,
        ) {
            Some((v, o, f)) => parse_endpoints(v).map_err(|m| invalid(&o, f, m))?,
            None => vec![DEFAULT_REGISTRY_ADDRESS.to_string()],
        };
        let register_ttl = match pick(
            &flags.register_ttl,
            &self.register_ttl,
            "register-ttl",
            format!("{sec}.RegisterTTL"),
            origin,
        ) {
            Some((0, o, f)) => return Err(invalid(&o, f, "must be at least 1 second")),
            Some((v, _, _)) => *v,
            None => DEFAULT_REGISTER_TTL_SECS,
        };
        let register_interval = match self.register_interval {
            Some(0) => {
                return Err(invalid(
                    origin,
                    format!("{sec}.RegisterInterval"),
                    "must be at least 1 second",
                ))
            }
            Some(i) if i >= register_ttl => {
                return Err(invalid(
                    origin,
                    format!("{sec}.RegisterInterval"),
                    format!(
                        "{i} s must be shorter than RegisterTTL ({register_ttl} s), or the \
                         registration expires between refreshes"
                    ),
                ))
            }
            Some(i) => Some(Duration::from_secs(i)),
            None => None,
        };
        let client_timeout = match self.client_timeout {
            Some(0) => {
                return Err(invalid(
                    origin,
                    format!("{sec}.ClientTimeOut"),
                    "must be at least 1 second",
                ))
            }
            Some(t) => t,
            None => DEFAULT_CLIENT_TIMEOUT_SECS,
        };
        let session_ttl = match self.session_ttl {
            Some(0) => {
                return Err(invalid(
                    origin,
                    format!("{sec}.SessionTTL"),
                    "must be at least 1 second",
                ))
            }
            Some(t) => t,
            None => DEFAULT_SESSION_TTL_SECS,
        };
        let task_retry_backoff = match self.task_retry_backoff {
            Some(0) => {
                return Err(invalid(
                    origin,
                    format!("{sec}.TaskRetryBackoff"),
                    "must be at least 1 second",
                ))
            }
            Some(b) => Duration::from_secs(b),
            None => Duration::from_secs(DEFAULT_TASK_RETRY_BACKOFF_SECS),
        };
        Ok(ServerSettings {
            id,
            name,
            http_listen,
            grpc_listen,
            advertise,
            registry,
            register_ttl: Duration::from_secs(register_ttl),
            register_interval,
            client_timeout: Duration::from_secs(client_timeout),
            session_ttl: Duration::from_secs(session_ttl),
            rebalance: self.rebalance.unwrap_or(false),
            task_retries: self
                .task_retries
                .unwrap_or(DEFAULT_TASK_RETRIES_AFTER_FAILURE),
            task_retry_backoff,
            api_token: self
                .api_token
                .as_deref()
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string),
        })
    }
}

fn check_id(id: &str) -> Result<(), String> {
    if id.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if id.contains(['/', '|']) || id.chars().any(char::is_whitespace) {
        return Err(format!(
            "{id:?} must not contain '/', '|' or spaces (it becomes part of a registry key and \
             of resource assignments)"
        ));
    }
    Ok(())
}

fn check_advertise(s: &str) -> Result<(), String> {
    let s = s.trim();
    if s.is_empty() || s.contains("://") || s.contains('/') || s.contains('|') {
        return Err(format!("{s:?} must be host:port or host"));
    }
    Ok(())
}

impl Config {
    /// Read and check a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            origin: origin.clone(),
            error,
        })?;
        Self::parse(&text, &origin)
    }

    /// Read `path` if given, else the built-in sample when `sample` is set, else defaults.
    /// Returns the config and its origin (for later errors).
    pub fn load_or(path: Option<&Path>, sample: bool) -> Result<(Config, String), ConfigError> {
        match path {
            Some(p) => Ok((Self::load(p)?, p.display().to_string())),
            None if sample => Ok((Self::sample()?, SAMPLE_CONFIG_ORIGIN.to_string())),
            None => Ok((Config::default(), "<defaults>".to_string())),
        }
    }

    /// The sample configuration shipped with the binary.
    pub fn sample() -> Result<Config, ConfigError> {
        Self::parse(SAMPLE_CONFIG, SAMPLE_CONFIG_ORIGIN)
    }

    /// Parse and check TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Check values serde cannot: names, limits, durations, log filter.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        if let Some(level) = &self.log_level {
            if let Err(e) = tracing_subscriber::EnvFilter::try_new(level) {
                return Err(invalid(origin, "logLevel", format!("{level:?}: {e}")));
            }
        }
        if let Some(s) = &self.sink {
            crate::crawl::validate::check_sink(s)
                .map_err(|e| invalid(origin, format!("Sink.{}", e.field), e.message))?;
        }
        let mut names = HashSet::new();
        for (i, t) in self.tasks.iter().enumerate() {
            crate::crawl::validate::check_task(t)
                .map_err(|e| invalid(origin, format!("Tasks[{i}].{}", e.field), e.message))?;
            if let (None, Some(s)) = (&t.sink, &self.sink) {
                crate::crawl::validate::check_sql_task_name(t, s)
                    .map_err(|e| invalid(origin, format!("Tasks[{i}].{}", e.field), e.message))?;
            }
            if !names.insert(t.name.as_str()) {
                return Err(invalid(
                    origin,
                    format!("Tasks[{i}].Name"),
                    format!("duplicate task name {:?}", t.name),
                ));
            }
        }
        // Catch section errors at load time, not only when a role resolves them.
        let none = ServerOverrides::default();
        self.master_server.resolve(Role::Master, &none, origin)?;
        self.grpc_server.resolve(Role::Worker, &none, origin)?;
        Ok(())
    }

    /// The task named `name`.
    pub fn task(&self, name: &str) -> Option<&TaskConfig> {
        self.tasks.iter().find(|t| t.name == name)
    }
}

#[cfg(test)]
mod tests;
