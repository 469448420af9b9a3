//! A conversation over a weak network: `tern-client` devices talk to the broker through a
//! seeded proxy that delays, fragments and cuts their connections and refuses some new
//! ones (conformance/src/flaky.rs). Two users with two devices each exchange 10,000 DMs;
//! every device must end with the whole conversation, in seq order, without duplicates,
//! each sender's messages in the order it sent them, and every device of a user must end
//! at the same read position, which the peer's devices see as a receipt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_client::{Client, Config, Event, SendState};
use tern_conformance::flaky::{Faults, FlakyProxy};
use tern_conformance::Broker;
use tokio::sync::{watch, Semaphore};

/// Messages each device sends (4 devices: 10,000 in all).
const PER_DEVICE: usize = 2_500;
/// Messages a device has waiting for their PUBACK at once.
const WINDOW: usize = 200;
/// The whole conversation must be through within this (it takes a few seconds here).
const LIMIT: Duration = Duration::from_secs(240);

/// What one device saw.
#[derive(Default)]
struct Seen {
    /// Inbox seqs handed to the app, in order.
    seqs: Vec<u64>,
    /// Payloads of the messages, in order.
    payloads: Vec<String>,
    sent: usize,
    failed: Vec<String>,
    /// The highest read position of its user it heard of, and the highest receipt id.
    read: Option<u64>,
    receipt: Option<u64>,
    /// Ids of the messages by seq (to know what a read position means).
    ids: HashMap<u64, u64>,
}

struct Device {
    user: &'static str,
    name: String,
    client: Client,
    seen: Arc<Mutex<Seen>>,
    changed: watch::Receiver<()>,
    window: Arc<Semaphore>,
}

fn start(port: u16, user: &'static str, name: &str) -> Device {
    let mut config = Config::new("127.0.0.1", port, user, "", name);
    config.resend_for = Duration::from_secs(600);
    config.reconnect_min = Duration::from_millis(20);
    config.reconnect_max = Duration::from_millis(400);
    config.connect_timeout = Duration::from_secs(2);
    config.keep_alive = Duration::from_secs(5);
    config.max_held = 20_000;
    let (client, mut events) = Client::connect(config).expect("client");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (tx, changed) = watch::channel(());
    let window = Arc::new(Semaphore::new(WINDOW));
    let (log, permits) = (seen.clone(), window.clone());
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            {
                let mut seen = log.lock().expect("lock");
                match event {
                    Event::Message {
                        seq, id, payload, ..
                    } => {
                        seen.seqs.push(seq);
                        seen.ids.insert(seq, id);
                        seen.payloads
                            .push(String::from_utf8_lossy(&payload).into_owned());
                    }
                    Event::SendState { state, .. } => match state {
                        SendState::Sending => continue,
                        SendState::Sent => {
                            seen.sent += 1;
                            permits.add_permits(1);
                        }
                        SendState::Failed { reason } => {
                            seen.failed.push(reason);
                            permits.add_permits(1);
                        }
                    },
                    Event::ReadPosition { seq, .. } => {
                        seen.read = seen.read.max(Some(seq));
                    }
                    Event::Receipt { id, .. } => seen.receipt = seen.receipt.max(Some(id)),
                    _ => continue,
                }
            }
            let _ = tx.send(());
        }
    });
    Device {
        user,
        name: name.to_string(),
        client,
        seen,
        changed,
        window,
    }
}

impl Device {
    /// Waits until `done` holds for what the device saw.
    async fn until(&mut self, what: &str, done: impl Fn(&Seen) -> bool) {
        let waited = tokio::time::timeout(LIMIT, async {
            loop {
                if done(&self.seen.lock().expect("lock")) {
                    return;
                }
                self.changed.changed().await.expect("events");
            }
        })
        .await;
        let seen = self.seen.lock().expect("lock");
        assert!(
            waited.is_ok(),
            "{}: {what} not reached: {} messages, {} sent, read {:?}, receipt {:?}",
            self.name,
            seen.seqs.len(),
            seen.sent,
            seen.read,
            seen.receipt
        );
    }
}

fn peer(user: &str) -> &'static str {
    if user == "alice" {
        "bob"
    } else {
        "alice"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_arrive_whole_in_order_on_every_device_through_a_flaky_network() {
    let broker = Broker::start_with(|c| {
        // Each user's log holds the whole conversation.
        c.im.inbox_max_messages = 20_000;
    })
    .await;
    let faults = Faults {
        seed: 0x7e57_1a9e,
        max_delay: Duration::from_millis(15),
        cut_probability: 0.01,
        life: Some((Duration::from_millis(400), Duration::from_millis(2_500))),
        refuse_probability: 0.2,
        fragment: true,
    };
    let proxy = FlakyProxy::start(broker.addr, faults).await.expect("proxy");
    let port = proxy.addr().port();
    let mut devices = vec![
        start(port, "alice", "alice-phone"),
        start(port, "alice", "alice-laptop"),
        start(port, "bob", "bob-phone"),
        start(port, "bob", "bob-laptop"),
    ];

    // Every device sends its share, keeping at most WINDOW unacknowledged, and reads what
    // it got now and then (read positions go up from either device of a user).
    let mut senders = tokio::task::JoinSet::new();
    for device in &devices {
        let (client, window, seen) = (
            device.client.clone(),
            device.window.clone(),
            device.seen.clone(),
        );
        let (user, name) = (device.user, device.name.clone());
        senders.spawn(async move {
            for i in 0..PER_DEVICE {
                window.acquire().await.expect("window").forget();
                client
                    .send_dm(peer(user), format!("{name}:{i}"))
                    .await
                    .expect("send");
                if i % 500 == 499 {
                    let last = seen.lock().expect("lock").seqs.last().copied();
                    if let Some(seq) = last {
                        client.read_dm(peer(user), seq).await.expect("read");
                    }
                }
            }
        });
    }
    while let Some(done) = senders.join_next().await {
        done.expect("sender");
    }

    let total = 4 * PER_DEVICE;
    for device in &mut devices {
        device
            .until("all sent", |s| s.sent + s.failed.len() == PER_DEVICE)
            .await;
        device
            .until("the whole conversation", |s| s.seqs.len() >= total)
            .await;
    }
    let stats = proxy.stats();
    assert!(
        stats.cut_random + stats.cut_life > 20 && stats.refused > 5,
        "the network was not weak enough to mean anything: {stats:?}"
    );

    for device in &devices {
        let seen = device.seen.lock().expect("lock");
        assert!(seen.failed.is_empty(), "{}: {:?}", device.name, seen.failed);
        // Each user's inbox holds the conversation from seq 0: every seq once, in order.
        let expected: Vec<u64> = (0..total as u64).collect();
        assert_eq!(seen.seqs, expected, "{}: seqs", device.name);
        // Each message once, and each sender's in the order it sent them.
        let mut next: HashMap<&str, usize> = HashMap::new();
        for payload in &seen.payloads {
            let (from, index) = payload.rsplit_once(':').expect("name:index");
            let index: usize = index.parse().expect("index");
            let expected = next.entry(from).or_insert(0);
            assert_eq!(
                index, *expected,
                "{}: {from}'s messages out of order",
                device.name
            );
            *expected += 1;
        }
        assert_eq!(next.len(), 4, "{}: senders {next:?}", device.name);
        assert!(
            next.values().all(|&n| n == PER_DEVICE),
            "{}: {next:?}",
            device.name
        );
    }

    // The network calms down; each device reads to the end. Every device of a user ends at
    // the same position, and the peer's devices at the receipt of it.
    proxy.calm();
    for device in &devices {
        device
            .client
            .read_dm(peer(device.user), total as u64 - 1)
            .await
            .expect("read");
    }
    let last_ids: HashMap<&str, u64> = devices
        .iter()
        .map(|d| {
            let seen = d.seen.lock().expect("lock");
            (d.user, seen.ids[&(total as u64 - 1)])
        })
        .collect();
    for device in &mut devices {
        device
            .until("the final read position", |s| {
                s.read == Some(total as u64 - 1)
            })
            .await;
        let peer_last = last_ids[peer(device.user)];
        device
            .until("the peer's final receipt", |s| s.receipt == Some(peer_last))
            .await;
    }
    for device in &devices {
        device.client.disconnect().await.expect("disconnect");
    }
    drop(proxy);
    broker.stop().await;
}
