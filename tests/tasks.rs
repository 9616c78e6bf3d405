//! Tasks as data: the task API's semantics on our store and on a real etcd (in-process masters,
//! workers as registry registrations), and the whole path on a three-master cluster of
//! processes whose workers have no `[[Tasks]]`: `crawler task add`, progress from any master,
//! kill -9 of the worker, pause, resume, a changed spec, recrawl, delete.

mod support;

use std::sync::Arc;

use crawler::client::{KvClient, KvClientExt, PutRequest};
use crawler::model::resource::Resource;
use crawler_proto::crawler::{Empty, TaskRequest};
use support::master_env::{self, grpc, http, http_addr, on_both, Env, Kind, WAIT};
use support::wait::eventually_some;

on_both!(task_api_semantics, an_api_token_guards_the_master_api);

const SPEC: &str = r#"{"Name":"t1","URLs":["http://127.0.0.1:9/"],"MaxPages":5}"#;

async fn keys(client: &Arc<dyn KvClient>, prefix: &str) -> Vec<String> {
    client
        .get_prefix(prefix)
        .await
        .expect("read")
        .body
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

async fn put(client: &Arc<dyn KvClient>, key: &str, value: Vec<u8>) {
    client
        .put(PutRequest {
            key: key.as_bytes().to_vec(),
            value,
            ..PutRequest::default()
        })
        .await
        .expect("put");
}

async fn resource(client: &Arc<dyn KvClient>, name: &str) -> Option<Resource> {
    let kv = client
        .get(format!("/resources/{name}"))
        .await
        .expect("read")
        .body?;
    Some(Resource::decode(&kv.value).expect("resource JSON"))
}

async fn task_api_semantics(env: Arc<Env>) {
    let client = env.client();
    let w = env.register_worker().await;
    let mut seed = crawler::model::task::TaskConfig::named("seeded");
    seed.urls = vec!["http://127.0.0.1:9/".into()];
    let mut cfg = env.master_config(1, &["seeded"]);
    cfg.seed_specs = vec![seed.clone()];
    let leader = env.start_master(cfg).await;
    assert!(leader.wait_ready(WAIT).await, "leader ready");
    let mut fcfg = env.master_config(2, &[]);
    fcfg.campaign = false;
    let follower = env.start_master(fcfg).await;
    let (lh, fh) = (http_addr(&leader), http_addr(&follower));

    // The config's tasks seed specs, as they seed resources.
    let (status, body) = http(lh, "GET", "/crawler/tasks/seeded", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["spec"]["URLs"][0], "http://127.0.0.1:9/");

    // Bad specs: 400 naming the field, nothing written.
    for (bad, field) in [
        (r#"{"Name":"t1","Bogus":1}"#, "Bogus"),
        (
            r#"{"Name":"t1","Limits":[{"EventCount":1,"EventDur":-1}]}"#,
            "Limits[0].EventDur",
        ),
        (r#"{"Name":"t1","URLs":["ftp://x/"]}"#, "URLs[0]"),
        (
            r#"{"Name":"t1","Rules":[{"Items":[{"Name":"i","Fields":[{"Name":"f","Selector":"a[["}]}]}]}"#,
            "Rules[0]",
        ),
        (r#"{"Name":"a/b"}"#, "Name"),
        (r#"{"Name":"t1","MaxPages":"many"}"#, "MaxPages"),
    ] {
        let (status, body) = http(fh, "POST", "/crawler/tasks", Some(bad)).await;
        assert_eq!(status, 400, "{bad}: {body}");
        let msg = body["error"].as_str().unwrap_or_default();
        assert!(msg.starts_with(field), "{bad}: {msg}");
    }
    assert!(keys(&client, "/crawler/specs/t1").await.is_empty());
    assert!(resource(&client, "t1").await.is_none());

    // Add through the follower (forwarded to the leader): 201, assigned to the live worker.
    let (status, body) = http(fh, "POST", "/crawler/tasks", Some(SPEC)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"]["state"], "assigned", "{body}");
    assert_eq!(body["status"]["worker"], w.id.as_str());
    assert_eq!(body["spec"]["MaxPages"], 5);
    let (status, body) = http(lh, "POST", "/crawler/tasks", Some(SPEC)).await;
    assert_eq!(status, 409, "{body}");
    let r1 = resource(&client, "t1").await.expect("resource stored");
    assert_eq!(r1.assigned_node, w.assigned());

    // A worker's progress report shows in the status, from any master.
    let progress = format!(
        r#"{{"state":"running","detail":"crawling","worker":"{}","resource_id":"{}","pages":7,"items":3,"errors":1,"frontier":4,"pages_per_sec":2.5,"last_checkpoint":"2026-01-01T00:00:00.000Z","updated_at":"2026-01-01T00:00:01.000Z"}}"#,
        w.id, r1.id
    );
    put(&client, "/crawler/status/t1", progress.as_bytes().to_vec()).await;
    let (_, body) = http(fh, "GET", "/crawler/tasks", None).await;
    let row = body["tasks"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["name"] == "t1").cloned())
        .expect("t1 listed");
    assert_eq!(
        (
            row["state"].as_str(),
            row["pages"].as_u64(),
            row["frontier"].as_u64()
        ),
        (Some("running"), Some(7), Some(4)),
        "{row}"
    );

    // Pause: unassigned and marked; the leader does not assign it again, even when a worker
    // joins.
    let (status, body) = http(fh, "POST", "/crawler/tasks/t1/pause", None).await;
    assert_eq!(
        (status, body["status"]["state"].as_str()),
        (200, Some("paused")),
        "{body}"
    );
    assert_eq!(
        resource(&client, "t1").await.expect("kept").assigned_node,
        ""
    );
    let _w2 = env.register_worker().await;
    eventually_some("the leader saw the second worker", WAIT, || async {
        (leader.workers().len() == 2).then_some(())
    })
    .await;
    // A reconcile pass ran once the join settled: the seed moved nowhere, t1 stays unassigned.
    let mut after_join = None;
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        after_join = resource(&client, "t1").await;
    }
    assert_eq!(
        after_join.expect("kept").assigned_node,
        "",
        "a paused task stays unassigned"
    );
    // Resume: assigned again, same ID (the run resumes from its checkpoint).
    let (status, body) = http(lh, "POST", "/crawler/tasks/t1/resume", None).await;
    assert_eq!(status, 200, "{body}");
    let r = resource(&client, "t1").await.expect("kept");
    assert!(!r.assigned_node.is_empty(), "{r:?}");
    assert_eq!(r.id, r1.id);
    assert!(keys(&client, "/crawler/paused/").await.is_empty());

    // Recrawl: a new ID, checkpoints and progress gone.
    put(
        &client,
        "/crawler/tasks/t1/manifest",
        br#"{"resource_id":"1"}"#.to_vec(),
    )
    .await;
    let (status, body) = http(fh, "POST", "/crawler/tasks/t1/recrawl", None).await;
    assert_eq!(status, 200, "{body}");
    let r2 = resource(&client, "t1").await.expect("kept");
    assert_ne!(r2.id, r1.id);
    assert!(keys(&client, "/crawler/tasks/t1/").await.is_empty());
    assert!(keys(&client, "/crawler/status/t1").await.is_empty());

    // Replace the spec: the body must name the same task.
    let other = SPEC.replace("t1", "t2");
    let (status, body) = http(fh, "PUT", "/crawler/tasks/t1", Some(&other)).await;
    assert_eq!(status, 400, "{body}");
    let new = SPEC.replace("\"MaxPages\":5", "\"MaxPages\":9");
    let (status, body) = http(fh, "PUT", "/crawler/tasks/t1", Some(&new)).await;
    assert_eq!(
        (status, body["spec"]["MaxPages"].as_u64()),
        (200, Some(9)),
        "{body}"
    );
    assert_eq!(
        resource(&client, "t1").await.expect("kept").id,
        r2.id,
        "same run"
    );
    let (status, _) = http(
        fh,
        "PUT",
        "/crawler/tasks/nope",
        Some(&SPEC.replace("t1", "nope")),
    )
    .await;
    assert_eq!(status, 404);

    // Delete keeps the checkpoints; adding again resumes from them (the checkpoint's ID).
    let manifest = format!(r#"{{"resource_id":"{}"}}"#, r2.id);
    put(&client, "/crawler/tasks/t1/manifest", manifest.into_bytes()).await;
    let (status, _) = http(fh, "DELETE", "/crawler/tasks/t1", None).await;
    assert_eq!(status, 200);
    assert!(resource(&client, "t1").await.is_none());
    assert!(keys(&client, "/crawler/specs/t1").await.is_empty());
    assert_eq!(keys(&client, "/crawler/tasks/t1/").await.len(), 1);
    let (status, body) = http(fh, "POST", "/crawler/tasks", Some(SPEC)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["status"]["resource_id"],
        r2.id.as_str(),
        "resumes its checkpoint"
    );
    // Delete with purge leaves nothing.
    let (status, _) = http(fh, "DELETE", "/crawler/tasks/t1?purge=true", None).await;
    assert_eq!(status, 200);
    for prefix in [
        "/crawler/tasks/t1/",
        "/crawler/specs/t1",
        "/crawler/status/t1",
        "/crawler/paused/t1",
    ] {
        assert!(keys(&client, prefix).await.is_empty(), "{prefix}");
    }
    let (status, _) = http(fh, "GET", "/crawler/tasks/t1", None).await;
    assert_eq!(status, 404);
    let (status, _) = http(fh, "DELETE", "/crawler/tasks/t1", None).await;
    assert_eq!(status, 404);

    // A resource added the seed way, without a spec, says so instead of failing silently.
    let (status, _) = http(fh, "POST", "/crawler/resource", Some(r#"{"name":"bare"}"#)).await;
    assert_eq!(status, 200);
    let (_, body) = http(fh, "GET", "/crawler/tasks/bare", None).await;
    assert_eq!(body["status"]["state"], "no_spec", "{body}");
    assert!(body["spec"].is_null());

    // A spec stored by hand that is not valid shows as such, and can be replaced and deleted.
    put(
        &client,
        "/crawler/specs/odd",
        br#"{"Name":"odd","Bogus":1}"#.to_vec(),
    )
    .await;
    let (_, body) = http(fh, "GET", "/crawler/tasks/odd", None).await;
    assert_eq!(body["status"]["state"], "invalid", "{body}");
    let (status, body) = http(fh, "POST", "/crawler/tasks/odd/pause", None).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = http(
        fh,
        "PUT",
        "/crawler/tasks/odd",
        Some(&SPEC.replace("t1", "odd")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"]["state"], "assigned", "{body}");
    let (status, _) = http(fh, "DELETE", "/crawler/tasks/odd?purge=true", None).await;
    assert_eq!(status, 200);

    // The gRPC API says the same.
    let mut g = grpc(&follower).await;
    let list = g.list_tasks(Empty {}).await.expect("list").into_inner();
    let list: serde_json::Value = serde_json::from_str(&list.json).expect("JSON");
    assert_eq!(list["tasks"].as_array().map(Vec::len), Some(2), "{list}");
    let err = g
        .task_command(TaskRequest {
            name: "g".into(),
            action: "add".into(),
            spec_json: r#"{"Name":"g","Timeout":0}"#.into(),
            purge: false,
        })
        .await
        .expect_err("bad spec");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("Timeout"), "{}", err.message());
    let added = g
        .task_command(TaskRequest {
            name: "g".into(),
            action: "add".into(),
            spec_json: r#"{"Name":"g"}"#.into(),
            purge: false,
        })
        .await
        .expect("added via gRPC (forwarded)")
        .into_inner();
    assert!(added.json.contains("\"name\":\"g\""), "{}", added.json);
    leader.shutdown().await;
    follower.shutdown().await;
}

/// A `crawler task ...` command against `master`: (success, stdout, stderr).
fn task_cli(master: std::net::SocketAddr, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_crawler"))
        .arg("task")
        .arg("--master")
        .arg(format!("http://{master}"))
        .args(args)
        .output()
        .expect("run crawler task");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The status row of `name` as `master` lists it.
async fn status_of(master: std::net::SocketAddr, name: &str) -> Option<serde_json::Value> {
    let (code, body) = master_env::try_http(master, "GET", "/crawler/tasks", None).await?;
    if code != 200 {
        return None;
    }
    body["tasks"]
        .as_array()?
        .iter()
        .find(|t| t["name"] == name)
        .cloned()
}

/// The spec of the end-to-end task: every page of the synthetic site is an item.
fn synth_spec(seed: &str, extra: &str) -> String {
    format!(
        r#"Name = "synth"
URLs = ["{seed}"]
Robots = false
Retries = 0
Concurrency = 2
CheckpointPages = 10
CheckpointInterval = 1
{extra}

[[Rules]]
Follow = ["ul a"]
Items = [{{ Name = "page", Fields = [{{ Name = "n", Selector = "span.n" }}] }}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_added_at_runtime_runs_moves_and_obeys_into_postgres() {
    let db = support::sql_servers::SqlServer::postgres().await;
    a_task_added_at_runtime_runs_moves_and_obeys(&db, "postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_added_at_runtime_runs_moves_and_obeys_into_mariadb() {
    let db = support::sql_servers::SqlServer::mariadb().await;
    a_task_added_at_runtime_runs_moves_and_obeys(&db, "mysql").await;
}

/// On a three-master cluster whose workers have no `[[Tasks]]`, a task added with the CLI runs,
/// survives kill -9 of its worker, shows its progress on every master, stores each item exactly
/// once in `db`, and obeys pause, resume, a new spec, recrawl and delete.
async fn a_task_added_at_runtime_runs_moves_and_obeys(
    db: &support::sql_servers::SqlServer,
    kind: &str,
) {
    use crawler::crawl::synthetic_site::{SiteOptions, SyntheticSite};
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    use support::masters::{ready_leader, spawn_three_masters, START_DEADLINE};
    use support::wait::{eventually, within};
    use support::worker_process::WorkerProcess;

    within(Duration::from_secs(240), async {
        master_env::capture_logs();
        let site = SyntheticSite::start(
            SiteOptions {
                fanout: 4,
                pages: 700,
                page_bytes: 512,
                latency: Duration::from_millis(15),
            },
            &["127.0.0.1:0".parse().expect("address")],
        )
        .await
        .expect("site");
        let dir = tempfile::tempdir().expect("temp dir");
        // Neither the masters nor the workers have a [[Tasks]] table.
        let master_cfg = dir.path().join("master.toml");
        std::fs::write(
            &master_cfg,
            "logLevel = \"warn\"\n\n[MasterServer]\nSessionTTL = 2\n",
        )
        .expect("write config");
        let (ms, endpoints) = spawn_three_masters(dir.path(), &master_cfg);
        let leader = ready_leader(&ms, None, START_DEADLINE).await;
        let any = ms[(leader + 1) % 3].http;
        let other = ms[(leader + 2) % 3].http;
        let registry = endpoints
            .iter()
            .map(|e| e.trim_start_matches("http://"))
            .collect::<Vec<_>>()
            .join(",");
        let mut workers = Vec::new();
        for id in ["1", "2"] {
            let cfg = dir.path().join(format!("worker{id}.toml"));
            std::fs::write(
                &cfg,
                format!(
                    "logLevel = \"warn\"\nDataDir = \"{}\"\n\n[GRPCServer]\nRegisterTTL = 2\n",
                    dir.path().join(format!("w{id}")).display()
                ),
            )
            .expect("write config");
            workers.push(Some(WorkerProcess::spawn(id, &registry, 2, &cfg)));
        }
        eventually("both workers registered", WAIT, || async {
            master_env::try_http(any, "GET", "/crawler/workers", None)
                .await
                .is_some_and(|(_, b)| b["workers"].as_array().map(Vec::len) == Some(2))
        })
        .await;

        // A bad spec is refused with the field named, and nothing is stored.
        let bad = dir.path().join("bad.toml");
        std::fs::write(
            &bad,
            synth_spec(&site.seed(), "Concurrency = 0").replace("Concurrency = 2\n", ""),
        )
        .expect("write spec");
        let (ok, _, err) = task_cli(any, &["add", "-f", bad.to_str().expect("utf-8")]);
        assert!(
            !ok && err.contains("400") && err.contains("Concurrency"),
            "{err}"
        );
        assert!(status_of(other, "synth").await.is_none());

        // Added through a follower with the CLI; it runs, and any master shows its progress.
        let sink = format!("Sink = {{ Kind = \"{kind}\", DSN = \"{}\" }}", db.dsn());
        let spec = dir.path().join("synth.toml");
        std::fs::write(&spec, synth_spec(&site.seed(), &sink)).expect("write spec");
        let (ok, out, err) = task_cli(any, &["add", "-f", spec.to_str().expect("utf-8")]);
        assert!(ok, "{out}{err}");
        assert!(out.contains("added task synth"), "{out}");
        let running = eventually_some("synth running past 120 pages", WAIT, || async {
            status_of(other, "synth")
                .await
                .filter(|s| s["state"] == "running" && s["pages"].as_u64() >= Some(120))
        })
        .await;
        let (ok, out, _) = task_cli(other, &["ls"]);
        assert!(
            ok && out.contains("synth") && out.contains("running"),
            "{out}"
        );
        let first = running["worker"].as_str().expect("worker").to_string();
        let resource_id = running["resource_id"].clone();

        // kill -9 of its worker: the task moves to the other worker and resumes there.
        let idx = if first.ends_with("-1") { 0 } else { 1 };
        if let Some(mut w) = workers[idx].take() {
            w.kill_9();
        }
        let moved = eventually_some("synth resumed on the other worker", WAIT, || async {
            status_of(other, "synth").await.filter(|s| {
                s["worker"].as_str().is_some_and(|w| w != first) && s["state"] == "running"
            })
        })
        .await;
        assert_eq!(moved["resource_id"], resource_id, "same run: {moved}");
        assert!(
            moved["detail"]
                .as_str()
                .is_some_and(|d| d.contains("resumed")),
            "resumed from the checkpoint: {moved}"
        );

        // Pause: it stops fetching; resume: it goes on from its checkpoint.
        let (ok, out, err) = task_cli(any, &["pause", "synth"]);
        assert!(ok && out.contains("paused"), "{out}{err}");
        let requests = &site.stats().requests;
        eventually("no more fetches while paused", WAIT, || async {
            let before = requests.load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(700)).await;
            requests.load(Ordering::SeqCst) == before
        })
        .await;
        let (ok, _, err) = task_cli(other, &["resume", "synth"]);
        assert!(ok, "{err}");
        eventually("synth running again", WAIT, || async {
            status_of(any, "synth").await.is_some_and(|s| {
                s["state"] == "running"
                    && s["detail"].as_str().is_some_and(|d| d.contains("resumed"))
            })
        })
        .await;

        // A new spec (a page bound) restarts the run with it, from its checkpoint.
        std::fs::write(
            &spec,
            synth_spec(&site.seed(), &format!("{sink}\nMaxPages = 400")),
        )
        .expect("write spec");
        let (ok, _, err) = task_cli(any, &["put", "synth", "-f", spec.to_str().expect("utf-8")]);
        assert!(ok, "{err}");
        let done = eventually_some("synth finished at its new bound", WAIT, || async {
            status_of(other, "synth")
                .await
                .filter(|s| s["state"] == "finished")
        })
        .await;
        assert_eq!(done["resource_id"], resource_id);
        let pages = done["pages"].as_u64().expect("pages");
        assert!((400..=410).contains(&pages), "{done}");
        // Every item exactly once in the database, across the move and the restarts.
        let (rows, urls, _, workers) =
            support::sql_servers::stored(db, "crawler_items", "synth").await;
        assert_eq!(Some(rows as u64), done["items"].as_u64(), "{done}");
        assert_eq!(rows, urls, "one item per page");
        assert_eq!(workers.len(), 2, "both workers stored items: {workers:?}");

        // Recrawl: a new run from the seeds.
        let before = requests.load(Ordering::SeqCst);
        let (ok, _, err) = task_cli(any, &["recrawl", "synth"]);
        assert!(ok, "{err}");
        let again = eventually_some("synth crawled again", WAIT, || async {
            status_of(other, "synth")
                .await
                .filter(|s| s["state"] == "finished" && s["resource_id"] != resource_id)
        })
        .await;
        assert!(
            requests.load(Ordering::SeqCst) >= before + 400,
            "pages fetched again: {again}"
        );

        // Delete with purge: gone from the API and from the store.
        let (ok, _, err) = task_cli(other, &["rm", "synth", "--purge"]);
        assert!(ok, "{err}");
        let client = master_env::remote_client(endpoints.clone());
        for prefix in [
            "/resources/synth",
            "/crawler/specs/synth",
            "/crawler/status/synth",
            "/crawler/tasks/synth/",
        ] {
            assert!(keys(&client, prefix).await.is_empty(), "{prefix}");
        }
        let (ok, _, err) = task_cli(any, &["get", "synth"]);
        assert!(!ok && err.contains("404"), "{err}");
        drop(workers);
        drop(ms);
    })
    .await;
}

/// The README's example spec is a valid spec.
#[test]
fn the_readme_example_spec_is_valid() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let section = readme
        .split("## Tasks as data")
        .nth(1)
        .expect("the Tasks as data section");
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a toml block");
    let table: toml::Table = toml::from_str(block).expect("TOML");
    let json = serde_json::to_vec(&table).expect("JSON");
    let spec = crawler::crawl::validate::parse_spec_json(&json).expect("a valid spec");
    assert_eq!(spec.name, "books");
    assert_eq!(spec.rules.len(), 2);
}

async fn an_api_token_guards_the_master_api(env: Arc<Env>) {
    let mut cfg = env.master_config(1, &[]);
    cfg.api_token = Some("s3cret".into());
    let leader = env.start_master(cfg).await;
    assert!(leader.wait_ready(WAIT).await, "leader ready");
    let mut fcfg = env.master_config(2, &[]);
    fcfg.campaign = false;
    fcfg.api_token = Some("s3cret".into());
    let follower = env.start_master(fcfg).await;
    let fh = http_addr(&follower);
    // Without the token: 401 JSON; the probes stay open.
    let (status, body) = http(fh, "GET", "/crawler/tasks", None).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("token")),
        "{body}"
    );
    let (status, _) = http(fh, "POST", "/crawler/tasks", Some(SPEC)).await;
    assert_eq!(status, 401);
    assert!(
        resource(&env.client(), "t1").await.is_none(),
        "nothing written"
    );
    for probe in ["/health", "/readyz"] {
        let (status, _) = http(fh, "GET", probe, None).await;
        assert_ne!(status, 401, "{probe}");
    }
    // With it: the CLI adds through the follower, which forwards to the leader with the token.
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = dir.path().join("t1.json");
    std::fs::write(&spec, SPEC).expect("write spec");
    let file = spec.to_str().expect("utf-8");
    let (ok, _, err) = task_cli(fh, &["add", "-f", file]);
    assert!(!ok && err.contains("401"), "{err}");
    let (ok, out, err) = task_cli(fh, &["--api-token", "s3cret", "add", "-f", file]);
    assert!(ok, "{out}{err}");
    assert!(resource(&env.client(), "t1").await.is_some());
    // gRPC: the same token in `authorization`.
    let mut g = grpc(&follower).await;
    let err = g.list_tasks(Empty {}).await.expect_err("no token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let mut req = tonic::Request::new(Empty {});
    req.metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().expect("metadata"));
    g.list_tasks(req).await.expect("with the token");
    leader.shutdown().await;
    follower.shutdown().await;
}
