//! Tests of the config file: parsing, flags over the file, errors naming file and field.
use super::*;
use crate::model::task::FetcherKind;

#[test]
fn sample_parses() {
    let cfg = Config::sample().expect("sample config is valid");
    assert!(cfg.tasks.len() >= 2);
    assert!(cfg.task("douban_book_list").is_some());
}

#[test]
fn go_style_file() {
    let text = r#"
logLevel = "debug"
Tasks = [
  {Name = "douban_book_list", WaitTime = 2, Reload = true, MaxDepth = 5, Fetcher = "browser",
   Limits = [{EventCount = 1, EventDur = 2, Bucket = 1}, {EventCount = 20, EventDur = 60}],
   Cookie = "bid=x"},
  {Name = "xxx"},
]
[GRPCServer]
HTTPListenAddress = ":8080"
GRPCListenAddress = ":9090"
ID = "1"
RegistryAddress = ":2379"
RegisterTTL = 60
RegisterInterval = 15
ClientTimeOut = 10
Name = "go.micro.server.worker"
[MasterServer]
ID = 2
"#;
    let cfg = Config::parse(text, "t.toml").expect("valid");
    assert_eq!(cfg.tasks[0].limits[1].burst(), 20);
    assert_eq!(cfg.tasks[0].fetcher, FetcherKind::Browser);
    let w = cfg
        .grpc_server
        .resolve(Role::Worker, &ServerOverrides::default(), "t.toml")
        .expect("worker");
    assert_eq!(w.registry, vec!["127.0.0.1:2379".to_string()]);
    assert_eq!(w.register_ttl, Duration::from_secs(60));
    assert_eq!(w.node_id(), "go.micro.server.worker-1");
    let m = cfg
        .master_server
        .resolve(Role::Master, &ServerOverrides::default(), "t.toml")
        .expect("master");
    assert_eq!(m.numeric_id(), Some(2));
    assert_eq!(m.http_listen.port(), 8081);
    assert_eq!(m.session_ttl, Duration::from_secs(5));
}

#[test]
fn flags_override_file() {
    let cfg =
        Config::parse("[GRPCServer]\nID = \"7\"\nRegisterTTL = 30\n", "t.toml").expect("valid");
    let flags = ServerOverrides {
        id: Some("9".into()),
        grpc: Some("127.0.0.1:0".into()),
        registry: Some("a:1, http://b:2".into()),
        register_ttl: Some(3),
        ..ServerOverrides::default()
    };
    let w = cfg
        .grpc_server
        .resolve(Role::Worker, &flags, "t.toml")
        .expect("worker");
    assert_eq!(w.id, "9");
    assert_eq!(w.grpc_listen, "127.0.0.1:0".parse().expect("addr"));
    assert_eq!(w.registry, vec!["a:1".to_string(), "b:2".to_string()]);
    assert_eq!(w.register_ttl, Duration::from_secs(3));
}

#[test]
fn errors_name_file_and_field() {
    let e = Config::parse("[[Tasks]]\nNmae = \"x\"\n", "my.toml").expect_err("typo");
    let s = e.to_string();
    assert!(s.starts_with("my.toml: "), "{s}");
    assert!(s.contains("Nmae") && s.contains("line 2"), "{s}");

    let e = Config::parse("[GRPCServer]\nRegisterTTL = \"ten\"\n", "my.toml").expect_err("type");
    assert!(e.to_string().contains("RegisterTTL"), "{e}");

    let e = Config::parse(
        "[[Tasks]]\nName = \"a\"\nLimits = [{EventCount = 1, EventDur = 0}]\n",
        "my.toml",
    )
    .expect_err("zero window");
    assert_eq!(
        e.to_string(),
        "my.toml: Tasks[0].Limits[0].EventDur: must be a positive number of seconds"
    );

    let e = Config::parse(
        "[[Tasks]]\nName = \"a\"\n[[Tasks]]\nName = \"a\"\n",
        "my.toml",
    )
    .expect_err("dup");
    assert!(e.to_string().contains("Tasks[1].Name"), "{e}");

    let e = Config::parse("[MasterServer]\nID = \"abc\"\n", "my.toml").expect_err("id");
    assert!(e.to_string().contains("MasterServer.ID"), "{e}");

    let e = Config::load(Path::new("/nonexistent/crawler.toml")).expect_err("missing");
    assert!(e.to_string().contains("/nonexistent/crawler.toml"), "{e}");

    let flags = ServerOverrides {
        http: Some("nonsense".into()),
        ..ServerOverrides::default()
    };
    let e = ServerConfig::default()
        .resolve(Role::Worker, &flags, "x")
        .expect_err("bad flag");
    assert!(e.to_string().contains("--http"), "{e}");
}

#[test]
fn sink_sections_parse_check_and_round_trip() {
    use crate::model::sink::SinkKind;
    let text = r#"
[Sink]
Kind = "postgres"
DSN = "postgres://u:p@127.0.0.1:5432/db"

[[Tasks]]
Name = "a"

[[Tasks]]
Name = "b"
Sink = { Kind = "mysql", DSN = "mysql://root@127.0.0.1:3306/crawl", Table = "b_items" }
"#;
    let cfg = Config::parse(text, "my.toml").expect("valid");
    let global = cfg.sink.as_ref().expect("[Sink]");
    assert_eq!(
        (global.kind, global.table()),
        (SinkKind::Postgres, "crawler_items")
    );
    assert_eq!(cfg.tasks[0].sink, None);
    let b = cfg.tasks[1].sink.as_ref().expect("task sink");
    assert_eq!((b.kind, b.table()), (SinkKind::Mysql, "b_items"));
    // Tasks are stored as JSON: unset fields stay absent and the value comes back equal.
    let json = serde_json::to_string(&cfg.tasks[0]).expect("json");
    assert!(!json.contains("Sink"), "{json}");
    for t in &cfg.tasks {
        let back: TaskConfig =
            serde_json::from_str(&serde_json::to_string(t).expect("json")).expect("back");
        assert_eq!(&back, t);
    }

    let e = Config::parse("[Sink]\nKind = \"postgres\"\n", "my.toml").expect_err("no dsn");
    assert!(
        e.to_string().starts_with("my.toml: Sink.DSN: is required"),
        "{e}"
    );
    let e = Config::parse(
        "[[Tasks]]\nName = \"a\"\nSink = { Kind = \"mysql\", DSN = \"mysql://h/d\", Table = \"x-y\" }\n",
        "my.toml",
    )
    .expect_err("bad table");
    assert!(
        e.to_string().starts_with("my.toml: Tasks[0].Sink.Table:"),
        "{e}"
    );
    let e = Config::parse("[Sink]\nKind = \"sqlite\"\n", "my.toml").expect_err("kind");
    assert!(e.to_string().contains("sqlite"), "{e}");
    let e = Config::parse("[Sink]\nDsn = \"x\"\n", "my.toml").expect_err("typo");
    assert!(e.to_string().contains("Dsn"), "{e}");
    let long = "n".repeat(300);
    let e = Config::parse(
        &format!("[Sink]\nKind = \"mysql\"\nDSN = \"mysql://h/d\"\n[[Tasks]]\nName = \"{long}\"\n"),
        "my.toml",
    )
    .expect_err("long name");
    assert!(e.to_string().contains("Tasks[0].Name"), "{e}");
}
