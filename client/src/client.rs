//! The async driver: a [`Client`] handle, the app's [`Events`], and two tasks.
//!
//! - The **pump** owns rumqttc's `EventLoop` and only polls it: it forwards each event to
//!   the driver, and after an error empties rumqttc's replay queue (the outbox resends, see
//!   `outbox.rs`), waits a backoff (100 ms doubling to 5 s, jittered) and polls again, which
//!   reconnects. It never gives up while the client exists. `poll` is never cancelled
//!   midway (that could cut a packet in half on the wire).
//! - The **driver** owns all chat state: the [`Outbox`], the [`SeqTracker`], the cursor
//!   file, the watched presences. It turns app commands, rumqttc events and a 250 ms tick
//!   into publishes (through rumqttc's `AsyncClient`) and [`Event`]s.
//!
//! A [`Gate`] shared by the two makes every hand-over to rumqttc belong to one connection:
//! the driver hands requests over only while the connection whose CONNACK it processed is
//! still up, and the pump drains rumqttc's request queue when a connection dies, so packet
//! ids reported after a CONNACK are those of requests made for that connection.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{
    Filter, Packet, PubAckReason, PublishProperties, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, EventLoop, MqttOptions};
use rumqttc::Outgoing;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{Config, ConfigError};
use crate::cursor::{CursorError, CursorFile};
use crate::events::{parse, topic_level_error, Conversation, Event, Inbound};
use crate::inbox::{Output, SeqTracker};
use crate::outbox::{LocalId, Outbox, OutboxEvent, OutboxFull, Request};

/// Publishes handed to rumqttc at once (fewer if the broker's Receive Maximum is lower).
const WINDOW: usize = 32;
/// rumqttc's request queue: the window, plus subscriptions.
const REQUEST_CAPACITY: usize = 128;
/// Presence filters per SUBSCRIBE.
const FILTERS_PER_SUBSCRIBE: usize = 50;
const TICK: Duration = Duration::from_millis(250);
/// A connection that lived this long resets the backoff; a shorter one (a broker that
/// accepts and then drops, a session taken over by another device) keeps it growing.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);
/// How long `disconnect` waits for the broker to close after DISCONNECT, and for the app
/// to take the last events.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What can go wrong calling the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Cursor(#[from] CursorError),
    #[error(transparent)]
    OutboxFull(#[from] OutboxFull),
    #[error("{what} `{name}` {rule}: docs/chat.md puts it in one topic level")]
    InvalidName {
        what: &'static str,
        name: String,
        rule: &'static str,
    },
    #[error("Client::connect needs a tokio runtime")]
    NoRuntime,
    #[error("the client is closed (disconnect was called)")]
    Closed,
}

/// A handle on a connection to tern; cheap to clone. The connection lives until
/// [`Client::disconnect`] or until every handle is dropped.
#[derive(Debug, Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    user: String,
}

/// What the client reports, in order. Read it promptly: while the app's queue is full the
/// client stops reading from the network (and the broker eventually drops a connection
/// that does not answer).
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` once the client is closed and every event was taken.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is ready.
    pub fn try_next(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

#[derive(Debug)]
enum Command {
    Send {
        topic: String,
        payload: Bytes,
        reply: oneshot::Sender<Result<LocalId, OutboxFull>>,
    },
    Request {
        request: Request,
        reply: oneshot::Sender<Result<(), OutboxFull>>,
    },
    Watch {
        user: String,
        watch: bool,
    },
    Disconnect {
        reply: oneshot::Sender<()>,
    },
}

impl Client {
    /// Starts connecting (in the background, with retries) and returns at once. Fails only
    /// on a bad [`Config`], an unreadable cursor file, or outside a tokio runtime.
    pub fn connect(config: Config) -> Result<(Client, Events), Error> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let cursor = config
            .cursor_file
            .as_ref()
            .map(|path| CursorFile::new(path, &config.user));
        let last = match &cursor {
            Some(cursor) => cursor.load()?,
            None => None,
        };

        let (mqtt, eventloop) = AsyncClient::new(mqtt_options(&config), REQUEST_CAPACITY);
        let gate = Arc::new(Mutex::new(Gate::default()));
        let (pumped_tx, pumped_rx) = mpsc::channel(64);
        let backoff = Backoff::new(config.reconnect_min, config.reconnect_max);
        let pump = runtime.spawn(pump(eventloop, pumped_tx, gate.clone(), backoff));

        let (commands_tx, commands_rx) = mpsc::channel(64);
        let (events_tx, events_rx) = mpsc::channel(config.event_capacity);
        let msgid_prefix = format!("{}-{:016x}", config.device_id, random_u64());
        let driver = Driver {
            me: config.user.clone(),
            mqtt,
            gate,
            epoch: 0,
            connected: false,
            outbox: Outbox::new(msgid_prefix, config.max_outbox, config.resend_for),
            tracker: SeqTracker::new(last, config.max_held),
            cursor,
            cursor_stored: last,
            cursor_interval: config.cursor_interval,
            cursor_due: Instant::now(),
            watched: BTreeSet::new(),
            controls: VecDeque::new(),
            subscribes_issued: VecDeque::new(),
            subscribes_by_pkid: HashMap::new(),
            pending: VecDeque::new(),
            high_water: config.event_capacity,
        };
        runtime.spawn(driver.run(commands_rx, pumped_rx, events_tx, pump));
        let client = Client {
            commands: commands_tx,
            user: config.user,
        };
        Ok((client, Events { rx: events_rx }))
    }

    /// The logged-in user.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Sends a DM to `to`; its progress comes as [`Event::SendState`].
    pub async fn send_dm(&self, to: &str, payload: impl Into<Bytes>) -> Result<LocalId, Error> {
        check_name("user", to)?;
        self.send(format!("dm/{to}"), payload.into()).await
    }

    /// Sends a message to the group `gid` (members only).
    pub async fn send_group(&self, gid: &str, payload: impl Into<Bytes>) -> Result<LocalId, Error> {
        check_name("group", gid)?;
        self.send(format!("group/{gid}"), payload.into()).await
    }

    /// "I have read the DM with `peer` up to my inbox seq `seq`." Offline, only the highest
    /// per conversation is kept, and sent when the network returns.
    pub async fn read_dm(&self, peer: &str, seq: u64) -> Result<(), Error> {
        check_name("user", peer)?;
        let conversation = Conversation::Direct {
            peer: peer.to_string(),
        };
        self.request(Request::Read { conversation, seq }).await
    }

    /// The same in the group `gid`.
    pub async fn read_group(&self, gid: &str, seq: u64) -> Result<(), Error> {
        check_name("group", gid)?;
        let conversation = Conversation::Group {
            gid: gid.to_string(),
        };
        self.request(Request::Read { conversation, seq }).await
    }

    /// Takes back my message `id` (the broker's id). Its recall entry arrives as
    /// [`Event::Recalled`]; a refusal (too late, not mine) as [`Event::RequestFailed`].
    pub async fn recall(&self, id: u64) -> Result<(), Error> {
        self.request(Request::Recall { id }).await
    }

    /// Asks who of the group read my message `id`; the answer is [`Event::GroupReceipts`].
    pub async fn group_receipts(&self, gid: &str, id: u64) -> Result<(), Error> {
        check_name("group", gid)?;
        let gid = gid.to_string();
        self.request(Request::GroupReceipts { gid, id }).await
    }

    /// Whether peers learn my read positions (read receipts).
    pub async fn set_receipts(&self, on: bool) -> Result<(), Error> {
        self.request(Request::Settings { receipts: on }).await
    }

    /// Subscribes to `user`'s presence, now and after every reconnect.
    pub async fn watch_presence(&self, user: &str) -> Result<(), Error> {
        self.watch(user, true).await
    }

    /// Stops watching `user`'s presence.
    pub async fn unwatch_presence(&self, user: &str) -> Result<(), Error> {
        self.watch(user, false).await
    }

    /// Closes the connection: the cursor is written, a DISCONNECT is sent (the persistent
    /// session stays on the broker), messages still unacknowledged are reported
    /// [`SendState::Failed`](crate::SendState::Failed), and [`Events::next`] then ends.
    pub async fn disconnect(&self) -> Result<(), Error> {
        let (reply, done) = oneshot::channel();
        self.commands
            .send(Command::Disconnect { reply })
            .await
            .map_err(|_| Error::Closed)?;
        done.await.map_err(|_| Error::Closed)
    }

    async fn send(&self, topic: String, payload: Bytes) -> Result<LocalId, Error> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Send {
            topic,
            payload,
            reply,
        })
        .await?;
        Ok(answer.await.map_err(|_| Error::Closed)??)
    }

    async fn request(&self, request: Request) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Request { request, reply }).await?;
        Ok(answer.await.map_err(|_| Error::Closed)??)
    }

    async fn watch(&self, user: &str, watch: bool) -> Result<(), Error> {
        check_name("user", user)?;
        let user = user.to_string();
        self.command(Command::Watch { user, watch }).await
    }

    async fn command(&self, command: Command) -> Result<(), Error> {
        self.commands.send(command).await.map_err(|_| Error::Closed)
    }
}

fn check_name(what: &'static str, name: &str) -> Result<(), Error> {
    match topic_level_error(name) {
        None => Ok(()),
        Some(rule) => Err(Error::InvalidName {
            what,
            name: name.chars().take(100).collect(),
            rule,
        }),
    }
}

fn mqtt_options(config: &Config) -> MqttOptions {
    let mut options = MqttOptions::new(&config.device_id, &config.host, config.port);
    options
        .set_credentials(&config.user, &config.password)
        // Validated: 5 s or more.
        .set_keep_alive(config.keep_alive)
        .set_clean_start(!config.persistent_session)
        .set_max_packet_size(Some(config.max_packet_size))
        .set_connection_timeout(config.connect_timeout.as_secs())
        .set_manual_acks(false);
    if config.persistent_session {
        let secs = u32::try_from(config.session_expiry.as_secs()).unwrap_or(u32::MAX);
        options.set_session_expiry_interval(Some(secs));
    }
    options
}

/// Which connection requests may be handed over on. See the module docs.
#[derive(Debug, Default)]
struct Gate {
    /// A connection is up (CONNACK seen, no error since).
    up: bool,
    /// CONNACKs seen by the pump.
    epoch: u64,
    /// The client is closing: the pump does not reconnect.
    closing: bool,
}

fn lock(gate: &Mutex<Gate>) -> MutexGuard<'_, Gate> {
    // A panic while holding it leaves two plain fields behind: still usable.
    gate.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the pump forwards.
#[derive(Debug)]
enum Pumped {
    /// Boxed: rumqttc's events are ~400 bytes, most of them rare packets.
    Event(Box<rumqttc::v5::Event>),
    /// A connection (or an attempt) ended.
    Error(String),
}

async fn pump(
    mut eventloop: EventLoop,
    tx: mpsc::Sender<Pumped>,
    gate: Arc<Mutex<Gate>>,
    mut backoff: Backoff,
) {
    let mut connected_at = None;
    loop {
        if lock(&gate).closing {
            return;
        }
        match eventloop.poll().await {
            Ok(event) => {
                if let rumqttc::v5::Event::Incoming(Packet::ConnAck(_)) = &event {
                    let mut gate = lock(&gate);
                    gate.up = true;
                    gate.epoch += 1;
                    connected_at = Some(Instant::now());
                }
                if tx.send(Pumped::Event(Box::new(event))).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                {
                    let mut gate = lock(&gate);
                    gate.up = false;
                    // rumqttc moved its in-flight publishes and its unread requests into
                    // `pending` to replay them on a resumed session; the outbox resends
                    // instead (outbox.rs says why). `clean` again drains what the driver
                    // handed over since, under the gate.
                    eventloop.clean();
                    eventloop.pending.clear();
                    eventloop.state.collision = None;
                }
                if connected_at
                    .take()
                    .is_some_and(|at: Instant| at.elapsed() >= STABLE_CONNECTION)
                {
                    backoff.reset();
                }
                if tx.send(Pumped::Error(error.to_string())).await.is_err() {
                    return;
                }
                tokio::time::sleep(backoff.next_delay(random_u64())).await;
            }
        }
    }
}

/// Delays between connection attempts: doubling from `min` to `max`, each drawn between
/// half and all of the current step so that devices dropped together do not return
/// together.
#[derive(Debug)]
struct Backoff {
    step: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            step: min,
            min,
            max,
        }
    }

    fn reset(&mut self) {
        self.step = self.min;
    }

    /// `random`: any 64 random bits.
    fn next_delay(&mut self, random: u64) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(self.max);
        let half = step / 2;
        let fraction = (random >> 11) as f64 / (1u64 << 53) as f64;
        half + half.mul_f64(fraction)
    }
}

/// 64 bits from std's per-process random hash keys and the clock: enough for jitter and
/// for telling this run's message ids from the last run's.
fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.finish()
}

/// A subscription change waiting to be handed to rumqttc.
#[derive(Debug, Clone)]
enum Control {
    Subscribe(Vec<String>),
    Unsubscribe(String),
}

struct Driver {
    me: String,
    mqtt: AsyncClient,
    gate: Arc<Mutex<Gate>>,
    /// CONNACKs this driver processed; requests are handed over only while it equals the
    /// gate's.
    epoch: u64,
    connected: bool,
    outbox: Outbox,
    tracker: SeqTracker<Event>,
    cursor: Option<CursorFile>,
    cursor_stored: Option<u64>,
    cursor_interval: Duration,
    cursor_due: Instant,
    watched: BTreeSet<String>,
    /// Subscription changes not yet handed over (they go before any publish).
    controls: VecDeque<Control>,
    /// SUBSCRIBEs handed over, waiting for their packet ids.
    subscribes_issued: VecDeque<Vec<String>>,
    subscribes_by_pkid: HashMap<u16, Vec<String>>,
    /// Events the app has not taken yet.
    pending: VecDeque<Event>,
    /// Above this many pending events, the network is not read.
    high_water: usize,
}

impl Driver {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut pumped: mpsc::Receiver<Pumped>,
        events: mpsc::Sender<Event>,
        pump: JoinHandle<()>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut app_gone = false;
        let closed_by = loop {
            self.flush();
            if app_gone {
                self.pending.clear();
            }
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(Command::Disconnect { reply }) => break Some(reply),
                    Some(command) => self.command(command),
                    None => break None,
                },
                permit = events.reserve(), if !self.pending.is_empty() => match permit {
                    Ok(permit) => {
                        if let Some(event) = self.pending.pop_front() {
                            permit.send(event);
                        }
                    }
                    // The app dropped `Events`: the client still sends for it.
                    Err(_) => app_gone = true,
                },
                p = pumped.recv(), if self.pending.len() < self.high_water => match p {
                    Some(p) => self.pumped(p),
                    None => {
                        tracing::warn!("the MQTT event loop stopped");
                        break None;
                    }
                },
                _ = tick.tick() => self.tick().await,
            }
        };
        self.close(&mut pumped, &events).await;
        pump.abort();
        if let Some(reply) = closed_by {
            let _ = reply.send(());
        }
    }

    fn command(&mut self, command: Command) {
        let now = Instant::now().into_std();
        match command {
            Command::Send {
                topic,
                payload,
                reply,
            } => {
                let result = self.outbox.send(topic, payload, now).map(|(id, _)| id);
                let _ = reply.send(result);
            }
            Command::Request { request, reply } => {
                let _ = reply.send(self.outbox.request(request, now));
            }
            Command::Watch { user, watch } => {
                let filter = format!("presence/{user}");
                let changed = if watch {
                    self.watched.insert(user)
                } else {
                    self.watched.remove(&user)
                };
                if changed && self.connected {
                    self.controls.push_back(if watch {
                        Control::Subscribe(vec![filter])
                    } else {
                        Control::Unsubscribe(filter)
                    });
                }
            }
            // Handled by the loop.
            Command::Disconnect { .. } => {}
        }
    }

    fn pumped(&mut self, pumped: Pumped) {
        match pumped {
            Pumped::Event(event) => match *event {
                rumqttc::v5::Event::Incoming(packet) => self.incoming(packet),
                rumqttc::v5::Event::Outgoing(outgoing) => self.outgoing(outgoing),
            },
            Pumped::Error(reason) => {
                if self.connected {
                    self.connected = false;
                    self.outbox.on_disconnected();
                    self.tracker.on_disconnected();
                }
                tracing::debug!(%reason, "disconnected");
                self.pending.push_back(Event::Disconnected { reason });
            }
        }
    }

    fn outgoing(&mut self, outgoing: Outgoing) {
        match outgoing {
            // 0 is QoS 0, which the client never uses.
            Outgoing::Publish(pkid) if pkid != 0 => self.outbox.on_publish_written(pkid),
            Outgoing::Subscribe(pkid) => {
                if let Some(filters) = self.subscribes_issued.pop_front() {
                    self.subscribes_by_pkid.insert(pkid, filters);
                }
            }
            _ => {}
        }
    }

    fn incoming(&mut self, packet: Packet) {
        let now = Instant::now().into_std();
        match packet {
            Packet::ConnAck(connack) => {
                self.connected = true;
                self.epoch += 1;
                let window = connack
                    .properties
                    .as_ref()
                    .and_then(|p| p.receive_max)
                    .map_or(WINDOW, |max| usize::from(max).min(WINDOW));
                self.outbox.on_connected(window);
                self.controls.clear();
                self.subscribes_issued.clear();
                self.subscribes_by_pkid.clear();
                // The inbox first, so that the `$sync` below is answered onto it.
                self.controls
                    .push_back(Control::Subscribe(vec![format!("inbox/{}/#", self.me)]));
                let presence: Vec<String> = self
                    .watched
                    .iter()
                    .map(|u| format!("presence/{u}"))
                    .collect();
                for chunk in presence.chunks(FILTERS_PER_SUBSCRIBE) {
                    self.controls.push_back(Control::Subscribe(chunk.to_vec()));
                }
                self.tracker.on_connected(now);
                self.pending.push_back(Event::Connected {
                    session_present: connack.session_present,
                });
            }
            Packet::Publish(publish) => {
                let Ok(topic) = std::str::from_utf8(&publish.topic) else {
                    tracing::debug!("ignored a publish whose topic is not UTF-8");
                    return;
                };
                let props = publish
                    .properties
                    .as_ref()
                    .map_or(&[][..], |p| p.user_properties.as_slice());
                match parse(&self.me, topic, props, &publish.payload) {
                    Ok(Inbound::Entry { seq, event }) => self.tracker.on_entry(seq, event, now),
                    Ok(Inbound::SyncEnd(end)) => self.tracker.on_sync_end(end, now),
                    Ok(Inbound::Notice(event)) => self.pending.push_back(event),
                    Err(e) => tracing::debug!(%topic, "ignored a publish: {e}"),
                }
            }
            Packet::PubAck(ack) => self.outbox.on_puback(ack.pkid, puback_code(&ack.reason)),
            Packet::SubAck(ack) => {
                let Some(filters) = self.subscribes_by_pkid.remove(&ack.pkid) else {
                    return;
                };
                for (filter, code) in filters.into_iter().zip(ack.return_codes) {
                    if !matches!(code, SubscribeReasonCode::Success(_)) {
                        tracing::warn!(%filter, ?code, "subscription refused");
                        self.pending.push_back(Event::SubscribeRefused {
                            filter,
                            reason: format!("{code:?}"),
                        });
                    }
                }
            }
            Packet::Disconnect(disconnect) => {
                // The error that ends the connection follows, with the reason.
                tracing::debug!(reason = ?disconnect.reason_code, "DISCONNECT from the broker");
            }
            _ => {}
        }
    }

    async fn tick(&mut self) {
        let now = Instant::now();
        self.outbox.on_tick(now.into_std());
        self.tracker.on_tick(now.into_std());
        if now >= self.cursor_due {
            self.store_cursor().await;
            self.cursor_due = now + self.cursor_interval;
        }
    }

    /// Moves what the state machines produced: deliveries and notices into `pending`,
    /// publishes and subscriptions to rumqttc.
    fn flush(&mut self) {
        while let Some(output) = self.tracker.poll_output() {
            match output {
                Output::Deliver { item, .. } => self.pending.push_back(item),
                Output::Sync { after } => self.outbox.sync(after),
                Output::Gap { from, to } => {
                    tracing::info!(from, to, "inbox entries gone for good");
                    self.pending.push_back(Event::Gap { from, to });
                }
                Output::Synced { next } => self.pending.push_back(Event::Synced { next }),
            }
        }
        self.hand_over();
        while let Some(event) = self.outbox.poll_event() {
            self.pending.push_back(match event {
                OutboxEvent::SendState {
                    local_id,
                    msgid,
                    state,
                } => Event::SendState {
                    local_id,
                    msgid,
                    state,
                },
                OutboxEvent::RequestFailed { request, reason } => {
                    Event::RequestFailed { request, reason }
                }
            });
        }
    }

    fn hand_over(&mut self) {
        if !self.connected {
            return;
        }
        let gate = lock(&self.gate);
        if !gate.up || gate.epoch != self.epoch {
            // The connection this driver knows is gone (or a newer one's CONNACK is on
            // its way): whatever goes now would be counted against the wrong one.
            return;
        }
        while let Some(control) = self.controls.front() {
            let taken = match control {
                Control::Subscribe(filters) => self
                    .mqtt
                    .try_subscribe_many(filters.iter().map(|f| Filter::new(f, QoS::AtLeastOnce)))
                    .is_ok(),
                Control::Unsubscribe(filter) => self.mqtt.try_unsubscribe(filter).is_ok(),
            };
            if !taken {
                // rumqttc's queue is full: the rest (and every publish) waits.
                return;
            }
            if let Some(Control::Subscribe(filters)) = self.controls.pop_front() {
                self.subscribes_issued.push_back(filters);
            }
        }
        while let Some(transmit) = self.outbox.poll_transmit() {
            let properties = PublishProperties {
                user_properties: transmit
                    .msgid
                    .map(|m| vec![("msgid".to_string(), m)])
                    .unwrap_or_default(),
                ..Default::default()
            };
            let handed = self.mqtt.try_publish_with_properties(
                transmit.topic,
                QoS::AtLeastOnce,
                false,
                transmit.payload,
                properties,
            );
            if let Err(e) = handed {
                tracing::debug!("rumqttc did not take a publish: {e}");
                self.outbox.unissue(transmit.key);
                return;
            }
        }
        drop(gate);
    }

    async fn store_cursor(&mut self) {
        let Some(cursor) = &self.cursor else {
            return;
        };
        let last = self.tracker.last();
        if last == self.cursor_stored {
            return;
        }
        let cursor = cursor.clone();
        match tokio::task::spawn_blocking(move || cursor.store(last)).await {
            Ok(Ok(())) => self.cursor_stored = last,
            Ok(Err(e)) => tracing::warn!("{e}; trying again later"),
            Err(e) => tracing::warn!("cursor write did not finish: {e}"),
        }
    }

    async fn close(&mut self, pumped: &mut mpsc::Receiver<Pumped>, events: &mpsc::Sender<Event>) {
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        let sent_disconnect = {
            let mut gate = lock(&self.gate);
            gate.closing = true;
            gate.up && gate.epoch == self.epoch && self.mqtt.try_disconnect().is_ok()
        };
        if sent_disconnect {
            // PUBACKs may still come before the broker closes.
            while let Ok(Some(p)) = tokio::time::timeout_at(deadline, pumped.recv()).await {
                let closed = matches!(p, Pumped::Error(_));
                self.pumped(p);
                if closed {
                    break;
                }
            }
        }
        self.connected = false;
        self.outbox
            .fail_all("the client was disconnected before the broker acknowledged it");
        self.flush();
        self.store_cursor().await;
        while let Some(event) = self.pending.pop_front() {
            if !matches!(
                tokio::time::timeout_at(deadline, events.send(event)).await,
                Ok(Ok(()))
            ) {
                tracing::debug!(left = self.pending.len() + 1, "events dropped at close");
                break;
            }
        }
    }
}

fn puback_code(reason: &PubAckReason) -> u8 {
    match reason {
        PubAckReason::Success => 0x00,
        PubAckReason::NoMatchingSubscribers => 0x10,
        PubAckReason::UnspecifiedError => 0x80,
        PubAckReason::ImplementationSpecificError => 0x83,
        PubAckReason::NotAuthorized => 0x87,
        PubAckReason::TopicNameInvalid => 0x90,
        PubAckReason::PacketIdentifierInUse => 0x91,
        PubAckReason::QuotaExceeded => 0x97,
        PubAckReason::PayloadFormatInvalid => 0x99,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::tests::TempDir;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let lowest: Vec<_> = (0..8).map(|_| b.next_delay(0)).collect();
        assert_eq!(lowest[0], Duration::from_millis(50));
        assert_eq!(lowest[1], Duration::from_millis(100));
        assert_eq!(lowest[7], Duration::from_millis(2500), "capped at 5 s");
        let top = b.next_delay(u64::MAX);
        assert!(top > Duration::from_millis(4900) && top <= Duration::from_secs(5));
        b.reset();
        assert_eq!(b.next_delay(0), Duration::from_millis(50));
    }

    #[test]
    fn random_bits_differ() {
        assert_ne!(random_u64(), random_u64());
    }

    #[test]
    fn puback_codes_are_mqtt5s() {
        assert_eq!(puback_code(&PubAckReason::NotAuthorized), 0x87);
        assert_eq!(puback_code(&PubAckReason::PayloadFormatInvalid), 0x99);
        assert!(puback_code(&PubAckReason::NoMatchingSubscribers) < 0x80);
    }

    #[test]
    fn connect_outside_a_runtime_is_an_error() {
        let config = Config::new("127.0.0.1", 1, "alice", "pw", "dev");
        assert!(matches!(Client::connect(config), Err(Error::NoRuntime)));
    }

    #[test]
    fn a_bad_config_is_refused_before_anything_starts() {
        let mut config = Config::new("127.0.0.1", 1, "alice", "pw", "dev");
        config.keep_alive = Duration::from_secs(1);
        let err = Client::connect(config).expect_err("keep-alive too short");
        assert!(err.to_string().contains("keep_alive"), "{err}");
    }

    #[tokio::test]
    async fn a_corrupt_cursor_file_is_an_error_naming_it() {
        let dir = TempDir::new();
        let path = dir.0.join("cursor.json");
        std::fs::write(&path, "not json").expect("written");
        let config = Config::new("127.0.0.1", 1, "alice", "pw", "dev").cursor_file(&path);
        let err = Client::connect(config).expect_err("corrupt cursor");
        assert!(matches!(err, Error::Cursor(_)));
        assert!(err.to_string().contains("cursor.json"), "{err}");
    }

    /// With no broker (a port nothing listens on), the client keeps trying, accepts
    /// messages into the outbox, refuses bad names and what exceeds the bound, and on
    /// disconnect reports the unsent as failed and writes the cursor.
    #[tokio::test]
    async fn offline_the_client_queues_and_closes_cleanly() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            listener.local_addr().expect("its address").port()
        };
        let dir = TempDir::new();
        let path = dir.0.join("cursor.json");
        CursorFile::new(&path, "alice")
            .store(Some(41))
            .expect("stored");
        let mut config = Config::new("127.0.0.1", port, "alice", "pw", "dev").cursor_file(&path);
        config.max_outbox = 2;
        let (client, mut events) = Client::connect(config).expect("started");

        let first = events.next().await.expect("an event");
        assert!(matches!(first, Event::Disconnected { .. }), "{first:?}");

        let id = client.send_dm("bob", "hi").await.expect("queued");
        client.read_dm("bob", 40).await.expect("queued");
        client
            .read_dm("bob", 41)
            .await
            .expect("coalesced, no room needed");
        assert!(matches!(
            client.send_group("g1", "x").await,
            Err(Error::OutboxFull(OutboxFull { max: 2 }))
        ));
        assert!(matches!(
            client.send_dm("bo/b", "x").await,
            Err(Error::InvalidName { .. })
        ));
        client.watch_presence("bob").await.expect("watched");

        client.disconnect().await.expect("closed");
        let mut rest = Vec::new();
        while let Some(event) = events.next().await {
            rest.push(event);
        }
        assert!(rest.contains(&Event::SendState {
            local_id: id,
            msgid: match rest.iter().find_map(|e| match e {
                Event::SendState { msgid, .. } => Some(msgid.clone()),
                _ => None,
            }) {
                Some(m) => m,
                None => panic!("a send state in {rest:?}"),
            },
            state: crate::SendState::Sending,
        }));
        assert!(
            rest.iter().any(|e| matches!(
                e,
                Event::SendState {
                    state: crate::SendState::Failed { .. },
                    ..
                }
            )),
            "{rest:?}"
        );
        assert!(rest
            .iter()
            .any(|e| matches!(e, Event::RequestFailed { .. })));
        assert!(matches!(
            client.send_dm("bob", "late").await,
            Err(Error::Closed)
        ));
        assert_eq!(CursorFile::new(&path, "alice").load(), Ok(Some(41)));
    }

    /// A scripted MQTT 5 peer on loopback (rumqttc's own codec), to check what the driver
    /// puts on the wire; not a broker: it answers only what each test tells it to.
    mod peer {
        use bytes::{Bytes, BytesMut};
        use rumqttc::v5::mqttbytes::v5::{
            ConnAck, ConnectReturnCode, Disconnect, DisconnectReasonCode, Packet, PubAck, Publish,
            PublishProperties, SubAck, SubscribeReasonCode,
        };
        use rumqttc::v5::mqttbytes::{Error as CodecError, QoS};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::{TcpListener, TcpStream};

        pub struct Peer {
            stream: TcpStream,
            buf: BytesMut,
            next_pkid: u16,
        }

        impl Peer {
            pub async fn accept(listener: &TcpListener) -> Peer {
                let (stream, _) = tokio::time::timeout(super::CLOSE_TIMEOUT * 5, listener.accept())
                    .await
                    .expect("the client connects in time")
                    .expect("accepted");
                Peer {
                    stream,
                    buf: BytesMut::new(),
                    next_pkid: 1,
                }
            }

            /// The next packet that is not a PUBACK or a PINGREQ.
            pub async fn recv(&mut self) -> Packet {
                loop {
                    match self.recv_any().await {
                        Packet::PubAck(_) | Packet::PingReq(_) => continue,
                        packet => return packet,
                    }
                }
            }

            pub async fn recv_any(&mut self) -> Packet {
                loop {
                    match Packet::read(&mut self.buf, None) {
                        Ok(packet) => return packet,
                        Err(CodecError::InsufficientBytes(_)) => {}
                        // rumqttc's decoder wants a body; a DISCONNECT with reason 0x00 may
                        // have none (MQTT 5, 3.14.2.1), and it is the only such packet here.
                        Err(CodecError::PayloadRequired) => {
                            return Packet::Disconnect(Disconnect::new(
                                DisconnectReasonCode::NormalDisconnection,
                            ))
                        }
                        Err(e) => panic!("the client sent a bad packet: {e:?}"),
                    }
                    let read = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        self.stream.read_buf(&mut self.buf),
                    )
                    .await
                    .expect("a packet in time")
                    .expect("read");
                    assert!(read > 0, "the client closed the connection");
                }
            }

            pub async fn send(&mut self, packet: Packet) {
                let mut out = BytesMut::new();
                packet.write(&mut out, None).expect("encoded");
                self.stream.write_all(&out).await.expect("written");
            }

            pub async fn connack(&mut self, session_present: bool) {
                self.send(Packet::ConnAck(ConnAck {
                    session_present,
                    code: ConnectReturnCode::Success,
                    properties: None,
                }))
                .await;
            }

            /// Expects a SUBSCRIBE of exactly `filters` and grants it.
            pub async fn suback(&mut self, filters: &[&str]) {
                let Packet::Subscribe(subscribe) = self.recv().await else {
                    panic!("a SUBSCRIBE");
                };
                let got: Vec<_> = subscribe.filters.iter().map(|f| f.path.as_str()).collect();
                assert_eq!(got, filters);
                assert!(subscribe.filters.iter().all(|f| f.qos == QoS::AtLeastOnce));
                self.send(Packet::SubAck(SubAck {
                    pkid: subscribe.pkid,
                    return_codes: vec![SubscribeReasonCode::Success(QoS::AtLeastOnce); got.len()],
                    properties: None,
                }))
                .await;
            }

            /// Expects a QoS 1 PUBLISH and returns it (not acknowledged yet).
            pub async fn publish(&mut self) -> Publish {
                let Packet::Publish(publish) = self.recv().await else {
                    panic!("a PUBLISH");
                };
                assert_eq!(publish.qos, QoS::AtLeastOnce);
                publish
            }

            pub async fn puback(
                &mut self,
                pkid: u16,
                reason: rumqttc::v5::mqttbytes::v5::PubAckReason,
            ) {
                let mut ack = PubAck::new(pkid, None);
                ack.reason = reason;
                self.send(Packet::PubAck(ack)).await;
            }

            /// An inbox publish to the client, at QoS 1.
            pub async fn deliver(&mut self, topic: &str, props: &[(&str, &str)], payload: &str) {
                let properties = PublishProperties {
                    user_properties: props
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                };
                let mut publish = Publish::new(
                    topic,
                    QoS::AtLeastOnce,
                    Bytes::copy_from_slice(payload.as_bytes()),
                    Some(properties),
                );
                publish.pkid = self.next_pkid;
                self.next_pkid += 1;
                self.send(Packet::Publish(publish)).await;
            }
        }

        pub fn text(publish: &Publish) -> (String, String) {
            (
                String::from_utf8_lossy(&publish.topic).into_owned(),
                String::from_utf8_lossy(&publish.payload).into_owned(),
            )
        }

        pub fn msgid(publish: &Publish) -> Option<String> {
            publish.properties.as_ref().and_then(|p| {
                p.user_properties
                    .iter()
                    .find(|(k, _)| k == "msgid")
                    .map(|(_, v)| v.clone())
            })
        }
    }

    async fn next_event(events: &mut Events) -> Event {
        tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("an event in time")
            .expect("the client is open")
    }

    /// The next event that is not a SendState::Sending or a Disconnected.
    async fn next_notable(events: &mut Events) -> Event {
        loop {
            match next_event(events).await {
                Event::SendState {
                    state: crate::SendState::Sending,
                    ..
                }
                | Event::Disconnected { .. } => continue,
                event => return event,
            }
        }
    }

    fn seq_of(event: &Event) -> Option<u64> {
        match event {
            Event::Message { seq, .. } => Some(*seq),
            _ => None,
        }
    }

    #[tokio::test]
    async fn the_driver_follows_the_conventions_on_the_wire_across_a_reconnect() {
        use peer::{msgid, text, Peer};
        use rumqttc::v5::mqttbytes::v5::PubAckReason;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bound");
        let port = listener.local_addr().expect("address").port();
        let dir = TempDir::new();
        let path = dir.0.join("cursor.json");
        CursorFile::new(&path, "alice")
            .store(Some(41))
            .expect("stored");
        let config = Config::new("127.0.0.1", port, "alice", "pw", "dev").cursor_file(&path);
        let (client, mut events) = Client::connect(config).expect("started");

        // CONNECT: the device id, the user, a persistent session.
        let mut peer = Peer::accept(&listener).await;
        let Packet::Connect(connect, _, login) = peer.recv().await else {
            panic!("a CONNECT");
        };
        assert_eq!(connect.client_id, "dev");
        assert!(!connect.clean_start);
        assert_eq!(
            connect.properties.and_then(|p| p.session_expiry_interval),
            Some(86_400)
        );
        assert_eq!(
            login.map(|l| (l.username, l.password)),
            Some(("alice".into(), "pw".into()))
        );
        peer.connack(false).await;
        // The inbox subscription, then `$sync` from the cursor.
        peer.suback(&["inbox/alice/#"]).await;
        let sync = peer.publish().await;
        assert_eq!(text(&sync), ("$sync".into(), "41".into()));
        peer.puback(sync.pkid, PubAckReason::Success).await;
        assert_eq!(
            next_event(&mut events).await,
            Event::Connected {
                session_present: false
            }
        );

        // A replayed DM, then the end marker.
        peer.deliver(
            "inbox/alice/dm/bob",
            &[("from", "bob"), ("seq", "42"), ("id", "100")],
            "hello",
        )
        .await;
        peer.deliver(
            "inbox/alice/sync",
            &[],
            r#"{"after":41,"last":42,"next":43,"more":false}"#,
        )
        .await;
        assert_eq!(seq_of(&next_event(&mut events).await), Some(42));
        assert_eq!(next_event(&mut events).await, Event::Synced { next: 43 });

        // A DM out; the connection drops before its PUBACK.
        client.watch_presence("bob").await.expect("watched");
        peer.suback(&["presence/bob"]).await;
        let local = client.send_dm("bob", "hi").await.expect("queued");
        let first = peer.publish().await;
        assert_eq!(text(&first), ("dm/bob".into(), "hi".into()));
        let first_msgid = msgid(&first).expect("a msgid");
        assert!(first_msgid.starts_with("dev-"), "{first_msgid}");
        drop(peer);

        // The reconnect: subscriptions and `$sync` again, then the same message, same msgid.
        let mut peer = Peer::accept(&listener).await;
        assert!(matches!(peer.recv().await, Packet::Connect(..)));
        peer.connack(true).await;
        peer.suback(&["inbox/alice/#"]).await;
        peer.suback(&["presence/bob"]).await;
        let sync = peer.publish().await;
        assert_eq!(text(&sync), ("$sync".into(), "42".into()));
        peer.puback(sync.pkid, PubAckReason::Success).await;
        let again = peer.publish().await;
        assert_eq!(text(&again), ("dm/bob".into(), "hi".into()));
        assert_eq!(msgid(&again), Some(first_msgid.clone()));
        peer.puback(again.pkid, PubAckReason::Success).await;
        assert_eq!(
            next_notable(&mut events).await,
            Event::Connected {
                session_present: true
            }
        );
        assert_eq!(
            next_notable(&mut events).await,
            Event::SendState {
                local_id: local,
                msgid: first_msgid,
                state: crate::SendState::Sent
            }
        );
        // Nothing else was replayed (rumqttc's own copy would come here): the next
        // publish is the read position.
        client.read_dm("bob", 42).await.expect("queued");
        let read = peer.publish().await;
        assert_eq!(text(&read), ("$read/dm/bob".into(), "42".into()));
        peer.puback(read.pkid, PubAckReason::Success).await;

        // The reconnect's replay is empty; then a gap: 45 before 43 and 44.
        peer.deliver(
            "inbox/alice/sync",
            &[],
            r#"{"after":42,"last":null,"next":43,"more":false}"#,
        )
        .await;
        assert_eq!(next_notable(&mut events).await, Event::Synced { next: 43 });
        peer.deliver(
            "inbox/alice/group/g1/carol",
            &[("from", "carol"), ("seq", "45"), ("id", "103")],
            "late",
        )
        .await;
        let sync = peer.publish().await;
        assert_eq!(text(&sync), ("$sync".into(), "42".into()));
        peer.puback(sync.pkid, PubAckReason::Success).await;
        for (seq, id) in [("43", "101"), ("44", "102")] {
            peer.deliver(
                "inbox/alice/dm/bob",
                &[("from", "bob"), ("seq", seq), ("id", id)],
                "x",
            )
            .await;
        }
        // A duplicate of 44, and a presence notice.
        peer.deliver(
            "inbox/alice/dm/bob",
            &[("from", "bob"), ("seq", "44"), ("id", "102")],
            "x",
        )
        .await;
        peer.deliver("presence/bob", &[], r#"{"online":true,"since":5}"#)
            .await;
        let seqs: Vec<_> = [
            next_notable(&mut events).await,
            next_notable(&mut events).await,
            next_notable(&mut events).await,
        ]
        .iter()
        .map(seq_of)
        .collect();
        assert_eq!(seqs, vec![Some(43), Some(44), Some(45)]);
        assert_eq!(
            next_notable(&mut events).await,
            Event::Presence {
                user: "bob".into(),
                online: true,
                since: Some(5),
                last_seen: None
            }
        );

        // A refused recall is reported; a malformed publish is ignored.
        peer.deliver("inbox/alice/dm/bob", &[("seq", "x")], "junk")
            .await;
        client.recall(100).await.expect("queued");
        let recall = peer.publish().await;
        assert_eq!(text(&recall), ("$recall".into(), "100".into()));
        peer.puback(recall.pkid, PubAckReason::NotAuthorized).await;
        assert_eq!(
            next_notable(&mut events).await,
            Event::RequestFailed {
                request: Request::Recall { id: 100 },
                reason: "refused by the broker: 0x87 not authorized".into()
            }
        );

        // Disconnect: a DISCONNECT on the wire, the cursor at 45.
        let closing = tokio::spawn(async move { client.disconnect().await });
        let last = peer.recv().await;
        assert!(matches!(last, Packet::Disconnect(_)), "{last:?}");
        drop(peer);
        closing.await.expect("joined").expect("closed");
        assert_eq!(CursorFile::new(&path, "alice").load(), Ok(Some(45)));
    }
}
