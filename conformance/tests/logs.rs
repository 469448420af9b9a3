//! The broker's log, as an operator reads it: connects and disconnects at info with client
//! id, user, remote address and listener, in text or JSON (`log.format`), and never a
//! payload. The broker runs as a child process so its real stderr is read.

use std::time::Duration;

use tern_codec::{Protocol, QoS};
use tern_conformance::{BrokerProcess, RawClient};

const BINARY: &str = env!("CARGO_BIN_EXE_tern-test-broker");
const SECRET: &str = "SECRET-PAYLOAD-7f3a";

/// Runs one client session against a broker started with `config` and returns its log.
async fn log_of_one_session(config: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("tern.toml");
    std::fs::write(&file, config).expect("write config");
    let data = dir.path().join("data");
    let config_arg = file.display().to_string();
    let broker = BrokerProcess::start(BINARY, &data, &["--config", &config_arg]).await;
    let (mut client, _) = RawClient::open_ok(broker.addr, Protocol::V5, "log-probe", true, |c| {
        c.username = Some("alice".into());
    })
    .await;
    client.subscribe(1, "logs/t", QoS::AtLeastOnce).await;
    client
        .send(tern_codec::Packet::Publish(
            tern_conformance::publish_packet("logs/t", QoS::AtLeastOnce, 2, SECRET),
        ))
        .await;
    // Its PUBACK and its own copy, in either order.
    let (mut acked, mut echoed) = (false, false);
    while !(acked && echoed) {
        match client.recv().await {
            Some(tern_codec::Packet::PubAck(_)) => acked = true,
            Some(tern_codec::Packet::Publish(p)) => {
                assert_eq!(&p.payload[..], SECRET.as_bytes());
                client.ack(&p).await;
                echoed = true;
            }
            other => panic!("expected PUBACK and PUBLISH, got {other:?}"),
        }
    }
    client.disconnect().await;
    broker.terminate();
    let (status, log) = broker.wait(Duration::from_secs(30)).await;
    assert!(status.success(), "broker exit {status}:\n{log}");
    assert!(!log.contains(SECRET), "a payload reached the log:\n{log}");
    log
}

#[tokio::test]
async fn text_log_names_client_user_peer_and_listener() {
    let log = log_of_one_session("[log]\nlevel = \"info\"\n").await;
    let connected = log
        .lines()
        .find(|l| l.contains("client connected") && l.contains("client_id=log-probe"))
        .unwrap_or_else(|| panic!("no connect line:\n{log}"));
    for field in ["INFO", "user=alice", "peer=127.0.0.1:", "listener=tcp"] {
        assert!(connected.contains(field), "{field} missing in {connected}");
    }
    let gone = log
        .lines()
        .find(|l| l.contains("client disconnected") && l.contains("client_id=log-probe"))
        .unwrap_or_else(|| panic!("no disconnect line:\n{log}"));
    assert!(
        gone.contains("user=alice") && gone.contains("peer=127.0.0.1:"),
        "{gone}"
    );
}

#[tokio::test]
async fn json_log_is_one_object_per_line_with_the_same_fields() {
    let log = log_of_one_session("[log]\nformat = \"json\"\n").await;
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let find = |message: &str| {
        events
            .iter()
            .find(|e| {
                e["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(message))
                    && e["fields"]["client_id"] == "log-probe"
            })
            .unwrap_or_else(|| panic!("no {message:?} event:\n{log}"))
    };
    for message in ["client connected", "client disconnected"] {
        let event = find(message);
        assert_eq!(event["level"], "INFO", "{event}");
        assert_eq!(event["fields"]["user"], "alice", "{event}");
        assert_eq!(event["fields"]["listener"], "tcp", "{event}");
        let peer = event["fields"]["peer"].as_str().unwrap_or_default();
        assert!(peer.starts_with("127.0.0.1:"), "{event}");
    }
}
