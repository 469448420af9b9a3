//! Operating several nodes: `tern cluster status` (through a node's admin API, and read
//! from NATS for a stopped node), `tern sessions show` finding a session on another node,
//! and each node's metrics labelled with its id. Over a real three-server NATS cluster.

use std::process::Output;

use serde_json::Value;
use tern_codec::Protocol;
use tern_conformance::chat::login;
use tern_conformance::nats::{join_all, NatsCluster};
use tern_conformance::{http, Broker, RawClient};

const BROKER: &str = env!("CARGO_BIN_EXE_tern-test-broker");

async fn tern(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(BROKER)
            .args(&args)
            .output()
            .expect("run tern")
    })
    .await
    .expect("tern thread")
}

async fn tern_ok(args: Vec<String>) -> String {
    let out = tern(args.clone()).await;
    assert!(
        out.status.success(),
        "tern {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn live(node: &Broker, args: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.extend([
        "--admin".into(),
        node.admin_url(),
        "--token".into(),
        node.admin_token(),
    ]);
    all
}

fn names(list: &Value, field: &str) -> Vec<String> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|item| item[field].as_str().expect("a name").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_sessions_and_metrics_span_the_nodes() {
    let nats = NatsCluster::start(3).await;
    let urls = nats.urls();
    let node = |name: &'static str| {
        let urls = urls.clone();
        Broker::start_with(move |c| {
            join_all(c, name, &urls);
            c.cluster.shards = 2;
        })
    };
    let (one, two) = (node("n1").await, node("n2").await);

    // Through node 1's admin API.
    let status: Value =
        serde_json::from_str(&tern_ok(live(&one, &["cluster", "status", "--json"])).await)
            .expect("JSON");
    assert_eq!(status["this_node"]["node"], "n1");
    assert_eq!(status["this_node"]["lease_holds"], true);
    assert_eq!(names(&status["nodes"], "node"), ["n1", "n2"]);
    let streams = names(&status["streams"], "name");
    for stream in [
        "KV_TERN_DIRECTORY",
        "KV_TERN_NODES",
        "KV_TERN_SESSIONS",
        "TERN_INBOX_0",
        "TERN_INBOX_1",
        "TERN_RETAINED",
    ] {
        assert!(
            streams.iter().any(|s| s == stream),
            "{stream} in {streams:?}"
        );
    }
    for stream in status["streams"].as_array().expect("streams") {
        let leader = stream["leader"]
            .as_str()
            .expect("every stream has a leader");
        assert!(leader.starts_with("nats-"), "{stream}");
        assert_eq!(
            stream["replicas"].as_array().map(Vec::len),
            Some(2),
            "three replicas: the leader and two more ({stream})"
        );
    }
    let text = tern_ok(live(&one, &["cluster", "status"])).await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("lease holds") && l.ends_with("yes")),
        "{text}"
    );
    for word in ["NODE", "n2", "STREAM", "TERN_INBOX_0", "current"] {
        assert!(text.contains(word), "{word:?} in:\n{text}");
    }

    // For a stopped node: read from NATS with its config file.
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("n3.toml");
    let quoted: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    std::fs::write(
        &config,
        format!(
            "[cluster]\nengine = \"nats\"\nnode_id = \"n3\"\nnats_urls = [{}]\n",
            quoted.join(", ")
        ),
    )
    .expect("write the config");
    let offline = tern_ok(vec![
        "cluster".into(),
        "status".into(),
        "--json".into(),
        "--config".into(),
        config.to_string_lossy().into_owned(),
        "--data-dir".into(),
        dir.path().join("data").to_string_lossy().into_owned(),
    ])
    .await;
    let offline: Value = serde_json::from_str(&offline).expect("JSON");
    assert!(offline["this_node"].is_null());
    assert_eq!(names(&offline["nodes"], "node"), ["n1", "n2"]);
    // Without a cluster config and without a running broker, it says what is missing.
    let refused = tern(vec![
        "cluster".into(),
        "status".into(),
        "--data-dir".into(),
        dir.path().join("data").to_string_lossy().into_owned(),
    ])
    .await;
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("[cluster]"));

    // A session connected on node 2, shown through node 1.
    let (_phone, _) = RawClient::open_ok(
        two.addr,
        Protocol::V5,
        "bob-phone",
        true,
        login("bob", None),
    )
    .await;
    let (status, view) = http(
        "GET",
        format!("{}/v1/sessions/bob-phone", one.admin_url()),
        Some(one.admin_token()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["node"], "n2");
    assert_eq!(view["user"], "bob");
    assert_eq!(view["connected"], true);
    let text = tern_ok(live(&one, &["sessions", "show", "bob-phone"])).await;
    assert!(text.contains("node") && text.contains("n2"), "{text}");
    let (status, _) = http(
        "GET",
        format!("{}/v1/sessions/nobody", one.admin_url()),
        Some(one.admin_token()),
        None,
    )
    .await;
    assert_eq!(status, 404);

    // Each node's metrics carry its id.
    for (node, name) in [(&one, "n1"), (&two, "n2")] {
        let metrics = node.metrics().await;
        assert!(
            metrics.contains(&format!("tern_uptime_seconds{{node=\"{name}\"}}")),
            "{name}: {}",
            metrics.lines().find(|l| l.contains("uptime")).unwrap_or("")
        );
    }
}
