//! A device reporting telemetry to tern over MQTT 3.1.1 with rumqttc: QoS 1 readings, a
//! retained status, and a will for when the device vanishes.
//!
//! Against a running broker (`./scripts/serve.sh`), `cargo run --example device`:
//!
//! 1. a monitor client subscribes to `devices/{id}/#` and prints what the broker delivers
//!    to it, so the output shows the round trip (`--no-monitor` leaves it out);
//! 2. the device connects with a will, `devices/{id}/status` = `lost` (retained), and
//!    publishes `online` (retained) there;
//! 3. it publishes `--count` JSON readings on `devices/{id}/telemetry` at QoS 1, each after
//!    the PUBACK of the one before;
//! 4. it publishes `offline` (retained) and disconnects cleanly, so the broker discards the
//!    will; or, with `--crash`, drops the connection without DISCONNECT, as a device that
//!    loses power does, and the broker publishes the will;
//! 5. exits with 1 and says what is missing unless every reading was acknowledged and the
//!    monitor saw every reading and the final status, each within `--timeout` seconds.
//!
//! `examples/README.md` shows a run; `conformance/tests/examples.rs` runs [`run`] against an
//! in-process broker.

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, LastWill, MqttOptions, Outgoing,
    Packet, Publish, QoS, SubscribeReasonCode,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Errors carry their own explanation: `main` prints them as they are.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// The device's status while connected.
pub const ONLINE: &str = "online";
/// The status a device publishes itself before a clean disconnect.
pub const OFFLINE: &str = "offline";
/// The will: the status the broker publishes for a device whose connection just broke.
pub const LOST: &str = "lost";

/// A device publishing telemetry to a running tern broker.
#[derive(Debug, Clone, Parser)]
#[command(name = "device")]
pub struct Options {
    /// The broker's MQTT host.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The broker's MQTT port.
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// The device id: its MQTT client id and its place in the topics.
    #[arg(long, default_value = "sensor-1")]
    pub id: String,
    /// How many readings to publish.
    #[arg(long, default_value_t = 5)]
    pub count: u32,
    /// Pause between two readings, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    pub interval_ms: u64,
    /// End by dropping the connection without DISCONNECT, so that the broker publishes
    /// the will.
    #[arg(long)]
    pub crash: bool,
    /// Do not run the monitor client.
    #[arg(long)]
    pub no_monitor: bool,
    /// MQTT user name of the device and the monitor. Without one (and without a password)
    /// each connects anonymously as the user its client id names, which the default
    /// loopback listener accepts.
    #[arg(long, value_name = "USER")]
    pub username: Option<String>,
    /// The password of --username, if it is a registered user.
    #[arg(long, value_name = "PW")]
    pub password: Option<String>,
    /// The longest wait for any one event (connection, acknowledgement, message), in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub timeout: u64,
}

/// What a successful run did.
#[derive(Debug, Clone)]
pub struct Summary {
    /// PUBACKs received for telemetry readings (the status messages not counted).
    pub telemetry_acked: u32,
    /// The run ended with `--crash`.
    pub crashed: bool,
    /// What the monitor saw (`None` with `--no-monitor`).
    pub monitor: Option<Monitored>,
}

/// What the monitor client received.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Monitored {
    /// The retained status it got on subscribing: an earlier run's last word, if any.
    pub retained_status: Option<String>,
    /// The telemetry readings, in arrival order.
    pub readings: Vec<Value>,
    /// The live status changes, in order: `online`, then `offline` or `lost`.
    pub statuses: Vec<String>,
}

fn status_topic(id: &str) -> String {
    format!("devices/{id}/status")
}

fn telemetry_topic(id: &str) -> String {
    format!("devices/{id}/telemetry")
}

/// Runs the whole example; `Err` says what went wrong or what did not arrive.
pub async fn run(opts: Options) -> Result<Summary, BoxError> {
    let id = opts.id.clone();
    let mut link = Link::new(&opts);

    // The monitor subscribes first, so that it sees everything the device publishes.
    let monitor = if opts.no_monitor {
        None
    } else {
        let (client, task) = link.start(Role::Monitor, link.options(&format!("{id}-monitor")));
        link.connected(Role::Monitor).await?;
        let filter = format!("devices/{id}/#");
        link.subscribe(&client, &filter).await?;
        Some((client, task))
    };

    // The will is registered with the CONNECT: if the connection ends without DISCONNECT,
    // the broker publishes it for the device, retained, so that whoever looks later (a
    // dashboard subscribing tomorrow) still learns the device is gone.
    let mut options = link.options(&id);
    options.set_last_will(LastWill::new(
        status_topic(&id),
        LOST,
        QoS::AtLeastOnce,
        true,
    ));
    let (device, device_task) = link.start(Role::Device, options);
    link.connected(Role::Device).await?;
    println!(
        "device  connected as {id}, will: {} = {LOST} (retained)",
        status_topic(&id)
    );
    link.publish(&device, &status_topic(&id), ONLINE, true, "")
        .await?;

    let mut telemetry_acked = 0;
    for n in 1..=opts.count {
        if n > 1 {
            link.pause(Duration::from_millis(opts.interval_ms)).await?;
        }
        let reading = json!({
            "device": id,
            "reading": n,
            "temperature_c": 21.0 + 0.25 * f64::from(n % 4),
            "battery_pct": 100u32.saturating_sub(n),
        });
        // QoS 1: the device keeps a reading until the broker has acknowledged it (the
        // broker acknowledges once it is durable for every persistent subscriber).
        let (topic, payload) = (telemetry_topic(&id), reading.to_string());
        let progress = format!(" ({n}/{})", opts.count);
        link.publish(&device, &topic, &payload, false, &progress)
            .await?;
        telemetry_acked += 1;
    }

    let last_word = if opts.crash {
        // Dropping the event loop closes its socket with no DISCONNECT: to the broker, the
        // device lost its network or its power.
        drop(device_task);
        println!("device  connection dropped without DISCONNECT (--crash): the will is due");
        LOST
    } else {
        // A clean goodbye: say so, then DISCONNECT, which makes the broker drop the will.
        link.publish(&device, &status_topic(&id), OFFLINE, true, "")
            .await?;
        device
            .disconnect()
            .await
            .map_err(|e| format!("device: cannot disconnect: {e}"))?;
        device_task.finished(link.wait).await;
        println!("device  disconnected cleanly (DISCONNECT: the broker discards the will)");
        OFFLINE
    };

    if opts.no_monitor {
        println!("ok: {} acknowledged", readings(telemetry_acked));
        return Ok(Summary {
            telemetry_acked,
            crashed: opts.crash,
            monitor: None,
        });
    }
    let monitored = link.monitor_until(opts.count, last_word).await?;
    if let Some((client, task)) = monitor {
        let _ = client.disconnect().await;
        task.finished(link.wait).await;
    }
    println!(
        "ok: {} acknowledged, one PUBACK each; the monitor saw every reading, then the \
         status {last_word}",
        readings(telemetry_acked)
    );
    Ok(Summary {
        telemetry_acked,
        crashed: opts.crash,
        monitor: Some(monitored),
    })
}

/// "1 reading", "5 readings".
fn readings(n: u32) -> String {
    format!("{n} reading{}", if n == 1 { "" } else { "s" })
}

/// Which connection an event comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Device,
    Monitor,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Device => "device",
            Role::Monitor => "monitor",
        }
    }
}

type RoleEvent = (Role, Result<Event, ConnectionError>);

/// A spawned rumqttc event loop (it must be polled all the time to send, receive and keep
/// the connection alive). Dropping it stops the loop, which closes the socket.
struct EventLoopTask(JoinHandle<()>);

impl EventLoopTask {
    /// Waits (at most `limit`) for the loop to end after a DISCONNECT was requested.
    async fn finished(mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit, &mut self.0).await;
    }
}

impl Drop for EventLoopTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The device's and the monitor's connections, whose events arrive on one channel, in
/// order; the monitor's deliveries are recorded and printed whenever they pass.
struct Link {
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    id: String,
    wait: Duration,
    events_tx: mpsc::UnboundedSender<RoleEvent>,
    events: mpsc::UnboundedReceiver<RoleEvent>,
    monitored: Monitored,
}

impl Link {
    fn new(opts: &Options) -> Link {
        let (events_tx, events) = mpsc::unbounded_channel();
        Link {
            host: opts.host.clone(),
            port: opts.port,
            username: opts.username.clone(),
            password: opts.password.clone(),
            id: opts.id.clone(),
            wait: Duration::from_secs(opts.timeout),
            events_tx,
            events,
            monitored: Monitored::default(),
        }
    }

    fn options(&self, client_id: &str) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, &self.host, self.port);
        options.set_keep_alive(Duration::from_secs(30));
        if let Some(user) = &self.username {
            // An empty password counts as none.
            options.set_credentials(user, self.password.as_deref().unwrap_or(""));
        }
        options
    }

    fn start(&self, role: Role, options: MqttOptions) -> (AsyncClient, EventLoopTask) {
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let tx = self.events_tx.clone();
        let task = tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await;
                let done = matches!(event, Err(_) | Ok(Event::Outgoing(Outgoing::Disconnect)));
                // Stop on a connection error rather than let rumqttc reconnect in a loop.
                if tx.send((role, event)).is_err() || done {
                    break;
                }
            }
        });
        (client, EventLoopTask(task))
    }

    /// The next packet from the broker; an error for a broken connection, or when nothing
    /// arrives within the timeout (`waiting_for` says what was expected).
    async fn next(&mut self, waiting_for: &str) -> Result<(Role, Packet), BoxError> {
        match tokio::time::timeout(self.wait, self.recv()).await {
            Ok(packet) => packet,
            Err(_) => Err(format!(
                "timed out after {} s waiting for {waiting_for}",
                self.wait.as_secs()
            )
            .into()),
        }
    }

    /// Lets `pause` pass while still reading (and printing) what arrives, so that the
    /// monitor's deliveries show up when they happen.
    async fn pause(&mut self, pause: Duration) -> Result<(), BoxError> {
        let until = tokio::time::Instant::now() + pause;
        while let Ok(packet) = tokio::time::timeout_at(until, self.recv()).await {
            packet?;
        }
        Ok(())
    }

    /// The next packet from the broker, whenever it comes. Cancel-safe: an event taken
    /// from the channel is fully handled before the next await.
    async fn recv(&mut self) -> Result<(Role, Packet), BoxError> {
        loop {
            match self.events.recv().await {
                Some((role, Ok(Event::Incoming(packet)))) => {
                    if let (Role::Monitor, Packet::Publish(publish)) = (role, &packet) {
                        self.observe(publish)?;
                    }
                    return Ok((role, packet));
                }
                Some((_, Ok(Event::Outgoing(_)))) => continue,
                Some((role, Err(e))) => return Err(self.explain(role, e)),
                None => return Err("every connection has ended".into()),
            }
        }
    }

    /// A connection error, with what to do about it.
    fn explain(&self, role: Role, error: ConnectionError) -> BoxError {
        let (host, port, who) = (&self.host, self.port, role.name());
        match error {
            ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword) => {
                format!("the broker refused the {who}: bad user name or password (--username, --password)")
            }
            ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized) => format!(
                "the broker refused the {who}: anonymous clients are not allowed on this \
                 listener, or the client id belongs to another user (--username, --password, --id)"
            ),
            ConnectionError::ConnectionRefused(code) => {
                format!("the broker refused the {who}'s connection: {code:?}")
            }
            ConnectionError::Io(e) => format!(
                "{who}: cannot talk to the broker at {host}:{port}: {e} (is `tern serve` \
                 running there? ./scripts/serve.sh starts one)"
            ),
            other => format!("the {who}'s connection to {host}:{port} failed: {other}"),
        }
        .into()
    }

    /// Waits for the CONNACK of `role` (a refused one comes back as an error from `next`).
    async fn connected(&mut self, role: Role) -> Result<(), BoxError> {
        let waiting_for = format!("the {}'s CONNACK", role.name());
        loop {
            if let (from, Packet::ConnAck(_)) = self.next(&waiting_for).await? {
                if from == role {
                    return Ok(());
                }
            }
        }
    }

    async fn subscribe(&mut self, monitor: &AsyncClient, filter: &str) -> Result<(), BoxError> {
        monitor
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .map_err(|e| format!("monitor: cannot subscribe: {e}"))?;
        let waiting_for = format!("the SUBACK of the monitor's {filter}");
        loop {
            if let (Role::Monitor, Packet::SubAck(ack)) = self.next(&waiting_for).await? {
                return match ack.return_codes.first() {
                    Some(SubscribeReasonCode::Success(_)) => {
                        println!("monitor subscribed to {filter}");
                        Ok(())
                    }
                    other => {
                        Err(format!("the broker refused the monitor's {filter}: {other:?}").into())
                    }
                };
            }
        }
    }

    /// Publishes at QoS 1 from the device and waits for the PUBACK (printed with `note`).
    async fn publish(
        &mut self,
        device: &AsyncClient,
        topic: &str,
        payload: &str,
        retain: bool,
        note: &str,
    ) -> Result<(), BoxError> {
        let retained = if retain { " (retained)" } else { "" };
        println!("device  -> {topic}: {payload}{retained}");
        device
            .publish(topic, QoS::AtLeastOnce, retain, payload.as_bytes().to_vec())
            .await
            .map_err(|e| format!("device: cannot publish: {e}"))?;
        let waiting_for = format!("the PUBACK of the device's message on {topic}");
        loop {
            // One message in flight at a time: the next PUBACK is this message's.
            if let (Role::Device, Packet::PubAck(_)) = self.next(&waiting_for).await? {
                println!("device  <- PUBACK{note}");
                return Ok(());
            }
        }
    }

    /// Records and prints one delivery to the monitor.
    fn observe(&mut self, publish: &Publish) -> Result<(), BoxError> {
        let text = String::from_utf8_lossy(&publish.payload).into_owned();
        if publish.topic == status_topic(&self.id) {
            // The broker sets RETAIN only on what it sends because of a new subscription
            // (the stored status); live status changes come without it.
            if publish.retain {
                println!(
                    "monitor <- {}: {text} (retained: the last status before this run)",
                    publish.topic
                );
                self.monitored.retained_status = Some(text);
            } else {
                let note = if text == LOST {
                    " (the will, published by the broker)"
                } else {
                    ""
                };
                println!("monitor <- {}: {text}{note}", publish.topic);
                self.monitored.statuses.push(text);
            }
        } else if publish.topic == telemetry_topic(&self.id) {
            println!("monitor <- {}: {text}", publish.topic);
            let reading: Value = serde_json::from_str(&text)
                .map_err(|e| format!("the monitor got a reading that is not JSON ({e}): {text}"))?;
            self.monitored.readings.push(reading);
        } else {
            println!(
                "monitor <- {}: {text} (not part of this example)",
                publish.topic
            );
        }
        Ok(())
    }

    /// Waits until the monitor has seen `count` readings and the status `last_word`, then
    /// checks they are what the device sent.
    async fn monitor_until(&mut self, count: u32, last_word: &str) -> Result<Monitored, BoxError> {
        loop {
            let seen = &self.monitored;
            if seen.readings.len() >= count as usize
                && seen.statuses.last().map(String::as_str) == Some(last_word)
            {
                break;
            }
            let waiting_for = format!(
                "the monitor to see {count} readings (has {}) and the status {last_word:?} \
                 (has {:?})",
                seen.readings.len(),
                seen.statuses
            );
            self.next(&waiting_for).await?;
        }
        let seen = self.monitored.clone();
        if seen.statuses.first().map(String::as_str) != Some(ONLINE) {
            return Err(format!(
                "the monitor saw the statuses {:?}, expected {ONLINE:?} first",
                seen.statuses
            )
            .into());
        }
        // QoS 1 from one publisher to one subscriber: in order, and here without gaps.
        for (i, reading) in seen.readings.iter().enumerate() {
            if reading["reading"] != json!(i + 1) || reading["device"] != json!(self.id) {
                return Err(format!("the monitor's reading {} is {reading}", i + 1).into());
            }
        }
        Ok(seen)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Options::parse()).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("device: {e}");
            ExitCode::FAILURE
        }
    }
}
