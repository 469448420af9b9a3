//! The offline-push webhook against a real HTTP server started by the test: a DM to a user
//! with no device connected is posted (user, seq, from, topic, a preview), one to a
//! connected user is not; while the server is down, posts are retried and the bounded
//! queue drops (and counts) what does not fit; once it is back, what was queued arrives,
//! in order. Connection events when asked for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::Value;
use tern_codec::Protocol;
use tern_conformance::chat::{device, publish, subscribe_all};
use tern_conformance::{eventually, Broker, RawClient, EVENT_TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// The app's webhook: every event it accepted, in order. While `failing`, it answers 503.
struct Hook {
    events: mpsc::UnboundedReceiver<Value>,
    failing: Arc<AtomicBool>,
}

impl Hook {
    /// Serves on `listener`: HTTP/1.1 with keep-alive, a JSON body per POST.
    fn serve(listener: TcpListener) -> Hook {
        let (tx, events) = mpsc::unbounded_channel();
        let failing = Arc::new(AtomicBool::new(false));
        let fail = failing.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (tx, fail) = (tx.clone(), fail.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(end) = find(&buf, b"\r\n\r\n") else {
                            let mut chunk = [0u8; 4096];
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        while buf.len() < end + 4 + length {
                            let mut chunk = [0u8; 4096];
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body: Vec<u8> = buf.drain(..end + 4 + length).skip(end + 4).collect();
                        let answer: &[u8] = if fail.load(Ordering::SeqCst) {
                            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
                        } else {
                            let batch: Value = serde_json::from_slice(&body).expect("JSON body");
                            for event in batch["events"].as_array().expect("events").iter() {
                                let _ = tx.send(event.clone());
                            }
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
                        };
                        if socket.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Hook { events, failing }
    }

    async fn next(&mut self, what: &str) -> Value {
        tokio::time::timeout(EVENT_TIMEOUT, self.events.recv())
            .await
            .unwrap_or_else(|_| panic!("{what}: no webhook event within {EVENT_TIMEOUT:?}"))
            .expect("hook server")
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_users_are_posted_through_a_server_that_goes_down_and_comes_back() {
    // A port nobody listens on yet: the webhook is down when the broker starts.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let broker = Broker::start_with(|c| {
        c.webhook.url = format!("http://127.0.0.1:{port}/hook");
        c.webhook.preview_bytes = 5;
        c.webhook.queue_capacity = 2;
        c.webhook.retry_max_ms = 200;
    })
    .await;
    let mut alice = device(&broker, "alice", "alice-phone").await;
    for (n, to) in ["bob", "carol", "dave", "erin", "frank"].iter().enumerate() {
        let packet_id = u16::try_from(n).expect("small") + 1;
        let reason = publish(
            &mut alice,
            packet_id,
            &format!("dm/{to}"),
            "hello there",
            &[],
        )
        .await;
        assert!(!reason.is_error(), "{reason:?}");
    }
    // One batch is being retried, two events wait in the queue, the rest were dropped.
    eventually("failed posts and dropped events are counted", || {
        let broker = &broker;
        async move {
            let text = broker.metrics().await;
            metric(&text, "tern_webhook_posts_failed_total") >= 2
                && metric(&text, "tern_webhook_events_dropped_total") >= 1
        }
    })
    .await;

    // The server comes back: the retried batch and the queued events arrive, in order.
    let mut hook = Hook::serve(
        TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the hook"),
    );
    let first = hook.next("the first DM's event").await;
    assert_eq!(first["event"], "offline_message");
    assert_eq!(first["user"], "bob");
    assert_eq!(first["from"], "alice");
    assert_eq!(first["seq"], 0);
    assert_eq!(first["topic"], "inbox/bob/dm/alice");
    assert_eq!(first["preview"], "hello");
    let mut users = vec![first["user"].as_str().expect("user").to_string()];
    let text = broker.metrics().await;
    let dropped = metric(&text, "tern_webhook_events_dropped_total");
    let arriving = 5 - usize::try_from(dropped).expect("small");
    while users.len() < arriving {
        let event = hook.next("a queued event").await;
        users.push(event["user"].as_str().expect("user").to_string());
    }
    let sent_to = ["bob", "carol", "dave", "erin", "frank"];
    let positions: Vec<usize> = users
        .iter()
        .map(|u| sent_to.iter().position(|s| s == u).expect("a recipient"))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "in order: {users:?}"
    );

    // A user with a device connected gets no event; the next offline one does.
    let mut bob = device(&broker, "bob", "bob-phone").await;
    subscribe_all(&mut bob, &["inbox/bob/#"]).await;
    assert!(!publish(&mut alice, 10, "dm/bob", "are you there", &[])
        .await
        .is_error());
    bob.expect_publish("the DM to connected bob").await;
    assert!(!publish(&mut alice, 11, "dm/grace", "hi grace", &[])
        .await
        .is_error());
    let next = hook.next("grace's event").await;
    assert_eq!(next["user"], "grace", "no event for connected bob: {next}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_events_when_asked_for_and_503_is_retried() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut hook = Hook::serve(listener);
    hook.failing.store(true, Ordering::SeqCst);
    let broker = Broker::start_with(|c| {
        c.webhook.url = format!("http://127.0.0.1:{port}/hook");
        c.webhook.connection_events = true;
        c.webhook.retry_max_ms = 200;
    })
    .await;
    let phone = RawClient::open_ok(broker.addr, Protocol::V5, "bob-phone", true, |c| {
        c.username = Some("bob".into());
    })
    .await
    .0;
    eventually("the 503s are counted", || {
        let broker = &broker;
        async move { metric(&broker.metrics().await, "tern_webhook_posts_failed_total") >= 1 }
    })
    .await;
    hook.failing.store(false, Ordering::SeqCst);
    let connected = hook.next("bob's connect").await;
    assert_eq!(connected["event"], "connected");
    assert_eq!(connected["user"], "bob");
    assert_eq!(connected["client_id"], "bob-phone");
    phone.disconnect().await;
    let gone = hook.next("bob's disconnect").await;
    assert_eq!(gone["event"], "disconnected");
    assert_eq!(gone["client_id"], "bob-phone");
    broker.stop().await;
}
