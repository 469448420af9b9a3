//! Chat across nodes: every user's inbox log lives in JetStream, in one of a few streams
//! (`TERN_INBOX_<shard>`, the user's shard by a stable hash of the name), on the subject
//! `tern.inbox.<shard>.<user>`. Each JetStream message there holds one or more
//! consecutive entries of the log ([`inbox_chunk`](super::inbox_chunk)): the chat message
//! as stored on one node (stamped with its sender), the user's role and the entry's
//! dedupe id; headers say the first entry's `seq` and how many entries follow.
//!
//! Numbering without a sequence service: a node appends entries `n + 1 ..` only on the
//! condition that the subject's last message is the one it knows as ending at entry `n`
//! (`Nats-Expected-Last-Subject-Sequence`); when another node appended meanwhile, the
//! append is refused, the node reads the log again and retries. So two nodes never hand
//! out the same seq, and seqs have no gap. While one append of a user is in flight the
//! user's next entries queue, and go in the next append together: a replicated write per
//! burst, not per entry (and the next append waits `cluster.append_linger_us` after one,
//! so that a busy user's bursts grow). A resend, on any node, within the dedupe window,
//! of an entry the log holds is dropped ([`inbox_dedupe`](super::inbox_dedupe)). A chat
//! message is acknowledged once every recipient's append is (replicated, on a majority
//! of the NATS servers).
//!
//! Delivery: each stream republishes what it stores on `tern.deliver.<user>`, from its
//! leader, in the stream's order; a node subscribes to that subject while its
//! subscriptions hold a filter on the user's inbox (see `subject::for_filter`) and hands
//! each entry to its router as the recipient's copy. `$sync` reads the log itself
//! ([`InboxReader`]). No JetStream consumer per session or per user is kept.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use async_nats::HeaderMap;
use bytes::{Bytes, BytesMut};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tern_storage::StorageError;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::inbox_chunk::{self, entry_len, put_entry};
use super::inbox_dedupe::{IdHasher, RecentIds};
use super::{subject, ATTEMPT_TIMEOUT};
use crate::config::ImConfig;
use crate::im::inbox::for_recipient;
use crate::im::sync::LogEntry;
use crate::metrics::Metrics;
use crate::protocol::{now_ms, Message};
use crate::router::{InboxAppend, NodeLease, RouterHandle};

/// Header with the seq of the message's first entry in its user's log.
pub(super) const SEQ: &str = "Tern-Seq";
/// Header with the number of entries in the message (0: a marker that only keeps the
/// log's numbering, see `inbox_trim`).
pub(super) const COUNT: &str = "Tern-Count";
/// Header with the user whose log holds the entry (subjects escape names).
pub(super) const USER: &str = "Tern-User";

/// Entries taken from publishers and not yet appended, over all users: past this the
/// appender stops taking messages and publishers wait.
const MAX_QUEUED: usize = 65_536;

/// Users whose last entry the appender remembers while they are idle.
const MAX_REMEMBERED: usize = 65_536;

/// Entries one append carries at most.
const MAX_CHUNK_ENTRIES: usize = 256;

/// Bytes one append carries at most, unless one entry alone is larger (NATS refuses
/// messages over its `max_payload`, 1 MiB by default).
const MAX_CHUNK_BYTES: usize = 512 * 1024;

/// Messages one request reads back from a log's dedupe window.
const WINDOW_BATCH: usize = 256;

/// How long a `$sync` read of the log may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error("cannot create or open the stream {name}: {source}")]
    Stream {
        name: String,
        #[source]
        source: jetstream::context::CreateStreamError,
    },
    #[error("cannot let the stream {name} answer direct reads: {source}")]
    Update {
        name: String,
        #[source]
        source: jetstream::context::UpdateStreamError,
    },
}

/// Why the log of a user could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("reading the last entry of {subject}: {source}")]
    Last {
        subject: String,
        #[source]
        source: stream::LastRawMessageError,
    },
    #[error("following {subject}: {source}")]
    Consumer {
        subject: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("reading the recent entries of {subject}: {source}")]
    Window {
        subject: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("the copy of {subject} that answered is behind its last entry {last}")]
    Behind { subject: String, last: u64 },
    #[error("{subject} holds a message that is not an inbox entry: {what}")]
    Malformed { subject: String, what: String },
    #[error("reading {subject} took longer than {READ_TIMEOUT:?}")]
    TimedOut { subject: String },
    #[error("no answer reading {subject} within {ATTEMPT_TIMEOUT:?}")]
    NoAnswer { subject: String },
}

/// How the appender recognises resends (`im.dedup_window_secs`, `im.dedup_window_entries`).
#[derive(Debug, Clone, Copy)]
struct Dedupe {
    /// Zero: resends are not recognised.
    window: Duration,
    /// Ids remembered over all logs at most.
    max_ids: usize,
}

/// The inbox streams, one per shard.
#[derive(Clone)]
pub(crate) struct InboxStreams {
    jetstream: jetstream::Context,
    streams: Arc<[stream::Stream]>,
    /// How long an append is retried (leader elections, a lost reply) before the message
    /// is refused to its publisher (`cluster.append_timeout_ms`).
    retry_for: Duration,
    /// How long a log's next append waits after one (`cluster.append_linger_us`).
    linger: Duration,
    dedupe: Dedupe,
    hasher: IdHasher,
}

impl InboxStreams {
    /// Opens (or creates) the `shards` streams with `replicas`; the log of a user keeps
    /// at least its last `im.inbox_max_messages` entries, and resends are recognised for
    /// `im.dedup_window_secs`. An append is retried for `retry_for`; a log's next append
    /// waits `linger` after one.
    pub(crate) async fn open(
        jetstream: &jetstream::Context,
        shards: u32,
        replicas: usize,
        im: &ImConfig,
        retry_for: Duration,
        linger: Duration,
    ) -> Result<InboxStreams, InboxError> {
        let mut streams = Vec::new();
        for shard in 0..shards {
            let name = format!("TERN_INBOX_{shard}");
            let config = stream::Config {
                name: name.clone(),
                subjects: vec![subject::inbox_logs(shard)],
                // Counts messages, each of one or more entries.
                max_messages_per_subject: i64::try_from(im.inbox_max_messages).unwrap_or(i64::MAX),
                num_replicas: replicas,
                storage: stream::StorageType::File,
                // The dedupe window is read back through direct gets.
                allow_direct: true,
                republish: Some(stream::Republish {
                    source: subject::inbox_logs(shard),
                    destination: format!("{}.>", subject::DELIVER),
                    headers_only: false,
                }),
                ..Default::default()
            };
            let stream = jetstream
                .get_or_create_stream(config.clone())
                .await
                .map_err(|source| InboxError::Stream {
                    name: name.clone(),
                    source,
                })?;
            if !stream.cached_info().config.allow_direct {
                jetstream
                    .update_stream(&config)
                    .await
                    .map_err(|source| InboxError::Update { name, source })?;
            }
            streams.push(stream);
        }
        Ok(InboxStreams {
            jetstream: jetstream.clone(),
            streams: streams.into(),
            retry_for,
            linger,
            dedupe: Dedupe {
                window: Duration::from_secs(im.dedup_window_secs),
                max_ids: im.dedup_window_entries.max(1),
            },
            hasher: IdHasher::default(),
        })
    }

    /// Every inbox stream.
    pub(super) fn all(&self) -> &[stream::Stream] {
        &self.streams
    }

    pub(super) fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// The stream of `user`'s log and its subject there.
    fn of(&self, user: &str) -> (&stream::Stream, String) {
        let shards = self.streams.len().max(1) as u64;
        let shard = (fnv1a(user.as_bytes()) % shards) as u32;
        (
            &self.streams[shard as usize],
            subject::inbox_log(shard, user),
        )
    }
}

/// FNV-1a: a user's shard must not change between builds or platforms.
fn fnv1a(bytes: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(bytes);
    hasher.finish()
}

/// The last message of a user's log as a node knows it: what the next append is
/// conditional on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Last {
    /// The seq the next entry gets (0 for an empty log).
    pub(super) next_seq: u64,
    /// The stream sequence of the last message (0: none).
    pub(super) stream_seq: u64,
}

/// The first entry's seq and the entries of an inbox log message.
fn chunk_of(
    headers: Option<&HeaderMap>,
    payload: Bytes,
) -> Result<(u64, Vec<inbox_chunk::ChunkEntry>), String> {
    let headers = headers.ok_or_else(|| "no headers".to_string())?;
    let first = header_u64(headers, SEQ).ok_or_else(|| format!("no {SEQ} header"))?;
    let entries = inbox_chunk::entries(payload)?;
    match header_u64(headers, COUNT) {
        Some(count) if count == entries.len() as u64 => Ok((first, entries)),
        count => Err(format!(
            "{COUNT} says {count:?}, the payload holds {}",
            entries.len()
        )),
    }
}

/// Reads the last message of `subject` (from the stream's leader), and what the next
/// append to the log is conditional on.
pub(super) async fn read_last(
    stream: &stream::Stream,
    subject: &str,
) -> Result<Option<(jetstream::message::StreamMessage, Last)>, ReadError> {
    let message = match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => message,
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => return Ok(None),
        Err(source) => {
            return Err(ReadError::Last {
                subject: subject.to_string(),
                source,
            })
        }
    };
    let last = last_of(&message).ok_or_else(|| ReadError::Malformed {
        subject: subject.to_string(),
        what: format!("no {SEQ} or {COUNT}"),
    })?;
    Ok(Some((message, last)))
}

/// Publishes `publish` on `subject` and waits for the stream to keep it.
pub(super) async fn publish_acked(
    jetstream: &jetstream::Context,
    subject: &str,
    publish: jetstream::message::PublishMessage,
) -> Result<jetstream::publish::PublishAck, jetstream::context::PublishError> {
    match jetstream.send_publish(subject.to_string(), publish).await {
        Ok(ack) => ack.await,
        Err(e) => Err(e),
    }
}

/// What the next append to a log is conditional on, from its last message.
fn last_of(message: &jetstream::message::StreamMessage) -> Option<Last> {
    let first = header_u64(&message.headers, SEQ)?;
    let count = header_u64(&message.headers, COUNT)?;
    Some(Last {
        next_seq: first.saturating_add(count),
        stream_seq: message.sequence,
    })
}

pub(super) fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name).and_then(|v| v.as_str().parse().ok())
}

/// One recipient's entry waiting to be appended.
struct Entry {
    record: Bytes,
    role: u8,
    /// Empty for a message without a client `msgid`: never taken for a resend.
    msg_id: String,
    /// `msg_id` hashed, for the dedupe window (`None`: empty).
    id_hash: Option<u64>,
    request: Arc<Request>,
}

/// A chat message's appends: its publisher is told when the last one is done.
struct Request {
    /// (appends left, the publisher's answer until given)
    state: Mutex<(usize, Option<Answer>)>,
}

type Answer = oneshot::Sender<Result<(), StorageError>>;

impl Request {
    fn settle(&self, result: Result<(), String>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 = state.0.saturating_sub(1);
        let answer = match result {
            Err(what) => Err(StorageError::Elsewhere { what }),
            Ok(()) if state.0 == 0 => Ok(()),
            Ok(()) => return,
        };
        if let Some(done) = state.1.take() {
            let _ = done.send(answer);
        }
    }
}

/// What a node knows of a user's log: its last message and the ids of the dedupe window.
#[derive(Debug, Default)]
struct Known {
    last: Last,
    recent: RecentIds,
}

/// A user's log as the appender sees it.
#[derive(Default)]
struct UserLog {
    /// `None`: unknown (or lent to the append in flight); read before the next append.
    known: Option<Known>,
    /// The ids of this log counted in the appender's total.
    counted: usize,
    queue: VecDeque<Entry>,
    /// An append is in flight, or the log waits out the linger after one.
    busy: bool,
    /// The end of the linger after the last append, while nothing waits for it: an
    /// entry that comes before then waits for it (no timer runs for a log that gets none).
    quiet_until: Option<Instant>,
}

/// Appends the chat messages the router hands over, in the order it hands them over
/// per user, one append in flight per user (each is conditional on the previous one),
/// each carrying what queued for the user meanwhile.
///
/// Nothing is appended while the node's `lease` does not hold: the senders' sessions may
/// live on another node by then, which their resends go to.
pub(super) async fn append(
    streams: InboxStreams,
    mut requests: mpsc::Receiver<InboxAppend>,
    lease: Arc<NodeLease>,
    metrics: Option<Arc<Metrics>>,
) {
    let mut logs: HashMap<String, UserLog> = HashMap::new();
    let mut running = FuturesUnordered::new();
    // Logs waiting `linger` after an append, before their next.
    let mut lingering = FuturesUnordered::new();
    let mut queued = 0usize;
    // Dedupe ids held over all logs (bounded by `dedupe.max_ids`).
    let mut remembered = 0usize;
    loop {
        tokio::select! {
            request = requests.recv(), if queued < MAX_QUEUED => {
                let Some(request) = request else { break };
                for (user, entry) in entries(request, &streams.hasher) {
                    queued += 1;
                    let log = logs.entry(user.clone()).or_default();
                    log.queue.push_back(entry);
                    if log.busy {
                        continue;
                    }
                    match log.quiet_until.take() {
                        Some(until) if until > Instant::now() => {
                            log.busy = true;
                            lingering.push(linger_until(until, user));
                        }
                        _ => {
                            if let Some(next) = start(&streams, &lease, &user, log) {
                                running.push(next);
                            }
                        }
                    }
                }
            }
            Some(appended) = running.next(), if !running.is_empty() => {
                let Appended { user, entries, result } = appended;
                queued = queued.saturating_sub(entries.len());
                let known_logs = logs.len();
                let Some(log) = logs.get_mut(&user) else { continue };
                log.busy = false;
                remembered = remembered.saturating_sub(log.counted);
                log.counted = 0;
                match result {
                    Ok(Done { known, appended, took }) => {
                        if let (Some(metrics), true) = (&metrics, appended > 0) {
                            metrics.inbox_appended(appended as u64, took);
                        }
                        log.counted = known.recent.len();
                        remembered += log.counted;
                        log.known = Some(known);
                        for entry in &entries {
                            entry.request.settle(Ok(()));
                        }
                    }
                    Err(what) => {
                        log.known = None;
                        tracing::warn!(%user, entries = entries.len(), "chat messages not stored: {what}");
                        for entry in &entries {
                            entry.request.settle(Err(what.clone()));
                        }
                    }
                }
                if log.queue.is_empty() && known_logs > MAX_REMEMBERED {
                    if let Some(log) = logs.remove(&user) {
                        remembered = remembered.saturating_sub(log.counted);
                    }
                    continue;
                }
                // Past the bound on ids, the log just appended to forgets its oldest ones
                // (forgetting the log would cost a read of its whole window next time).
                let over = remembered.saturating_sub(streams.dedupe.max_ids);
                if let (true, Some(known)) = (over > 0, log.known.as_mut()) {
                    known.recent.forget_oldest(over);
                    remembered = remembered.saturating_sub(log.counted);
                    log.counted = known.recent.len();
                    remembered += log.counted;
                }
                // Entries that come meanwhile join the next append, which stays `busy`
                // until then.
                if !streams.linger.is_zero() && log.queue.len() < MAX_CHUNK_ENTRIES {
                    let until = Instant::now() + streams.linger;
                    if log.queue.is_empty() {
                        log.quiet_until = Some(until);
                    } else {
                        log.busy = true;
                        lingering.push(linger_until(until, user));
                    }
                    continue;
                }
                if let Some(next) = start(&streams, &lease, &user, log) {
                    running.push(next);
                }
            }
            Some(user) = lingering.next(), if !lingering.is_empty() => {
                let Some(log) = logs.get_mut(&user) else { continue };
                log.busy = false;
                if let Some(next) = start(&streams, &lease, &user, log) {
                    running.push(next);
                }
            }
        }
    }
}

/// `user`, at `until`: the end of its log's linger.
async fn linger_until(until: Instant, user: String) -> String {
    tokio::time::sleep_until(until).await;
    user
}

/// An append done: its user, its entries, and what came of it, or why it failed.
struct Appended {
    user: String,
    entries: Vec<Entry>,
    result: Result<Done, String>,
}

/// What a successful append left.
struct Done {
    /// What the node knows of the log after it.
    known: Known,
    /// Entries it appended (the others were there already).
    appended: usize,
    /// From the publish to its acknowledgement, for the attempt that was kept.
    took: Duration,
}

type Appending = std::pin::Pin<Box<dyn std::future::Future<Output = Appended> + Send>>;

/// Starts appending what queued for `user`, if anything did.
fn start(
    streams: &InboxStreams,
    lease: &Arc<NodeLease>,
    user: &str,
    log: &mut UserLog,
) -> Option<Appending> {
    let mut entries = Vec::new();
    let mut bytes = 0usize;
    while let Some(entry) = log.queue.front() {
        let len = entry_len(&entry.msg_id, &entry.record);
        if !entries.is_empty()
            && (entries.len() >= MAX_CHUNK_ENTRIES || bytes + len > MAX_CHUNK_BYTES)
        {
            break;
        }
        bytes += len;
        entries.extend(log.queue.pop_front());
    }
    if entries.is_empty() {
        return None;
    }
    log.busy = true;
    let known = log.known.take();
    let (stream, subject) = streams.of(user);
    let stream = stream.clone();
    let jetstream = streams.jetstream.clone();
    let user = user.to_string();
    let lease = lease.clone();
    let retry_for = streams.retry_for;
    let dedupe = streams.dedupe;
    let hasher = streams.hasher.clone();
    Some(Box::pin(async move {
        let target = Target {
            jetstream: &jetstream,
            stream: &stream,
            lease: &lease,
            subject: &subject,
            user: &user,
            dedupe,
            hasher: &hasher,
        };
        let result = append_chunk(&target, &entries, known, retry_for).await;
        Appended {
            user,
            entries,
            result,
        }
    }))
}

/// The entries of a chat message, one per recipient, sharing its encoding.
fn entries(request: InboxAppend, hasher: &IdHasher) -> Vec<(String, Entry)> {
    let InboxAppend { from, plan, done } = request;
    let record = match super::encode(&plan.message) {
        Ok(record) => record,
        Err(e) => {
            let _ = done.send(Err(e));
            return Vec::new();
        }
    };
    let shared = Arc::new(Request {
        state: Mutex::new((plan.recipients.len(), Some(done))),
    });
    if plan.recipients.is_empty() {
        shared.settle(Ok(()));
    }
    plan.recipients
        .into_iter()
        .map(|(user, role)| {
            let (msg_id, id_hash) = match &plan.msgid {
                Some(msgid) => {
                    let mut msg_id = message_id(&from, msgid, &user);
                    // Ids are bounded by the names they are made of; this only keeps the
                    // chunk format's length field honest.
                    msg_id.truncate(floor_char_boundary(&msg_id, inbox_chunk::MAX_ID));
                    let id_hash = hasher.hash(msg_id.as_bytes());
                    (msg_id, Some(id_hash))
                }
                None => (String::new(), None),
            };
            let entry = Entry {
                record: record.clone(),
                role,
                msg_id,
                id_hash,
                request: shared.clone(),
            };
            (user, entry)
        })
        .collect()
}

/// The largest char boundary of `s` at most `at`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    (0..=at.min(s.len()))
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

/// Dedupe id of one recipient's entry: unambiguous whatever the names hold.
fn message_id(from: &str, msgid: &str, user: &str) -> String {
    format!("{}:{from}{}:{msgid}{user}", from.len(), msgid.len())
}

/// Appends what of `entries` the log does not hold yet, in one message, after the log's
/// last message as `known` (read from the stream when unknown or stale); retried for
/// `retry_for`.
async fn append_chunk(
    target: &Target<'_>,
    entries: &[Entry],
    known: Option<Known>,
    retry_for: Duration,
) -> Result<Done, String> {
    let Target {
        jetstream,
        lease,
        subject,
        user,
        dedupe,
        ..
    } = *target;
    let deadline = Instant::now() + retry_for;
    let mut backoff = super::Backoff::for_appends();
    let mut known = known;
    let mut stale = known.is_none();
    let mut appended = 0;
    let mut took = Duration::ZERO;
    loop {
        if stale {
            let read = tokio::time::timeout(ATTEMPT_TIMEOUT, refresh(target, &mut known))
                .await
                .unwrap_or_else(|_| {
                    Err(ReadError::NoAnswer {
                        subject: subject.to_string(),
                    })
                });
            if let Err(e) = read {
                wait(&mut backoff, deadline, retry_for, &e.to_string()).await?;
                continue;
            }
        }
        let Some(log) = known.as_mut() else {
            stale = true;
            continue;
        };
        let now = now_ms();
        let window = u64::try_from(dedupe.window.as_millis()).unwrap_or(u64::MAX);
        log.recent.expire(now.saturating_sub(window));
        // A resend of what the log holds (or of an entry before it here) is done already.
        let size = entries
            .iter()
            .map(|e| entry_len(&e.msg_id, &e.record))
            .sum();
        let mut chunk = BytesMut::with_capacity(size);
        let mut fresh: Vec<u64> = Vec::with_capacity(entries.len());
        let mut count = 0;
        for entry in entries {
            if let (false, Some(id)) = (dedupe.window.is_zero(), entry.id_hash) {
                if log.recent.contains(id) || fresh.contains(&id) {
                    continue;
                }
                fresh.push(id);
            }
            put_entry(&mut chunk, entry.role, &entry.msg_id, &entry.record);
            count += 1;
        }
        if count == 0 {
            break;
        }
        if !lease.holds() {
            return Err("this node lost its lease in the cluster".to_string());
        }
        let publish = jetstream::message::PublishMessage::build()
            .payload(chunk.freeze())
            .expected_last_subject_sequence(log.last.stream_seq)
            .header(SEQ, log.last.next_seq.to_string().as_str())
            .header(COUNT, count.to_string().as_str())
            .header(USER, user);
        let sent = Instant::now();
        let attempt = publish_acked(jetstream, subject, publish);
        let Ok(acked) = tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await else {
            // Perhaps stored after all: the next attempt reads the log first (and is
            // refused if it was, being conditional on the same last message).
            stale = true;
            wait(&mut backoff, deadline, retry_for, "no answer to the append").await?;
            continue;
        };
        match acked {
            Ok(ack) => {
                took = sent.elapsed();
                appended = count;
                log.last = Last {
                    next_seq: log.last.next_seq + count as u64,
                    stream_seq: ack.sequence,
                };
                if !dedupe.window.is_zero() {
                    for id in fresh {
                        log.recent.insert(id, now);
                    }
                }
                break;
            }
            // Another node appended to this log: read what it appended, and go on.
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => stale = true,
            Err(e) => {
                stale = true;
                wait(&mut backoff, deadline, retry_for, &e.to_string()).await?;
            }
        }
    }
    Ok(Done {
        known: known.unwrap_or_default(),
        appended,
        took,
    })
}

/// Where one user's entries go.
#[derive(Clone, Copy)]
struct Target<'a> {
    jetstream: &'a jetstream::Context,
    stream: &'a stream::Stream,
    lease: &'a NodeLease,
    subject: &'a str,
    user: &'a str,
    dedupe: Dedupe,
    hasher: &'a IdHasher,
}

/// Reads what an append to the log is conditional on: its last message, and the ids of
/// the entries it got within the dedupe window up to that message. What `known` already
/// holds is kept: only the messages after its last one are read (a log only grows).
async fn refresh(target: &Target<'_>, known: &mut Option<Known>) -> Result<(), ReadError> {
    let Target {
        jetstream,
        stream,
        subject,
        dedupe,
        hasher,
        ..
    } = *target;
    let Some((message, last)) = read_last(stream, subject).await? else {
        *known = Some(Known::default());
        return Ok(());
    };
    let since = OffsetDateTime::now_utc() - dedupe.window;
    let log = match known.take() {
        // Trimmed or purged below what this node knew: start over.
        Some(log) if log.last.stream_seq <= last.stream_seq => known.insert(log),
        _ => known.insert(Known::default()),
    };
    if !dedupe.window.is_zero() && message.time >= since && last.stream_seq > log.last.stream_seq {
        let from = match log.last.stream_seq {
            0 => From::Time(since),
            seq => From::Seq(seq + 1),
        };
        let window = Window {
            jetstream,
            stream,
            subject,
            hasher,
        };
        window.read(from, last.stream_seq, &mut log.recent).await?;
    }
    log.last = last;
    Ok(())
}

/// Where a read of a log's recent entries starts.
#[derive(Debug, Clone, Copy)]
enum From {
    Time(OffsetDateTime),
    Seq(u64),
}

/// A log whose recent entries' ids are read back.
struct Window<'a> {
    jetstream: &'a jetstream::Context,
    stream: &'a stream::Stream,
    subject: &'a str,
    hasher: &'a IdHasher,
}

impl Window<'_> {
    /// Remembers the ids of the entries stored from `from` through stream sequence
    /// `through`, read with direct gets (any of the stream's copies answers; one that is
    /// behind is an error, and the read is tried again).
    async fn read(
        &self,
        from: From,
        through: u64,
        recent: &mut RecentIds,
    ) -> Result<(), ReadError> {
        let subject = self.subject;
        let failed = |source: async_nats::Error| ReadError::Window {
            subject: subject.to_string(),
            source,
        };
        let malformed = |what: String| ReadError::Malformed {
            subject: subject.to_string(),
            what,
        };
        let client = self.jetstream.client();
        let api = subject::direct_get(&self.stream.cached_info().config.name);
        let now = now_ms();
        let mut from = from;
        let mut read_through = 0u64;
        loop {
            let mut request = serde_json::json!({ "next_by_subj": subject, "batch": WINDOW_BATCH });
            match from {
                From::Time(since) => {
                    let since = since
                        .format(&time::format_description::well_known::Rfc3339)
                        .map_err(|e| failed(e.into()))?;
                    request["start_time"] = since.into();
                }
                From::Seq(seq) => request["seq"] = seq.into(),
            }
            let inbox = client.new_inbox();
            let mut replies = client
                .subscribe(inbox.clone())
                .await
                .map_err(|e| failed(e.into()))?;
            client
                .publish_with_reply(api.clone(), inbox, request.to_string().into())
                .await
                .map_err(|e| failed(e.into()))?;
            let mut got = 0usize;
            while let Some(reply) = replies.next().await {
                // The end of the batch (or nothing found) comes as a status.
                if reply.status.is_some() {
                    break;
                }
                got += 1;
                let seq = reply
                    .headers
                    .as_ref()
                    .and_then(|h| header_u64(h, "Nats-Sequence"))
                    .ok_or_else(|| malformed("a direct get reply without Nats-Sequence".into()))?;
                if seq > through {
                    return Ok(());
                }
                read_through = seq;
                let (_, entries) =
                    chunk_of(reply.headers.as_ref(), reply.payload).map_err(malformed)?;
                for entry in entries.iter().filter(|entry| !entry.id.is_empty()) {
                    recent.insert(self.hasher.hash(&entry.id), now);
                }
                if got == WINDOW_BATCH {
                    break;
                }
            }
            if read_through >= through {
                return Ok(());
            }
            if got < WINDOW_BATCH {
                return Err(ReadError::Behind {
                    subject: subject.to_string(),
                    last: through,
                });
            }
            from = From::Seq(read_through + 1);
        }
    }
}

/// Sleeps before the next attempt, or gives up with `why` past `deadline`.
async fn wait(
    backoff: &mut super::Backoff,
    deadline: Instant,
    retry_for: Duration,
    why: &str,
) -> Result<(), String> {
    backoff
        .sleep_before(deadline)
        .await
        .map_err(|()| format!("the inbox log refused it for {retry_for:?}: {why}"))
}

/// Hands each entry republished on one user's delivery subject to the router, as that
/// user's copy. `via` is the filter the subscription stands for.
pub(super) async fn relay(
    mut subscriber: async_nats::Subscriber,
    via: Arc<str>,
    router: RouterHandle,
) {
    while let Some(received) = subscriber.next().await {
        let copies = recipient_copies(received.headers.as_ref(), received.payload);
        let copies = match copies {
            Ok(copies) => copies,
            Err(e) => {
                tracing::warn!(subject = %received.subject, "dropped inbox entries: {e}");
                continue;
            }
        };
        for copy in copies {
            if router
                .publish_remote(&Arc::new(copy), Some(&via), None)
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// The copies of an inbox log message's entries for their user (on the user's inbox
/// topic, with `seq`).
fn recipient_copies(headers: Option<&HeaderMap>, payload: Bytes) -> Result<Vec<Message>, String> {
    let user = headers
        .and_then(|h| h.get(USER))
        .ok_or_else(|| format!("no {USER} header"))?
        .as_str()
        .to_string();
    let (first, entries) = chunk_of(headers, payload)?;
    let mut copies = Vec::with_capacity(entries.len());
    for (seq, entry) in (first..).zip(entries) {
        let stored = super::decode(entry.record)?;
        let copy = for_recipient(&stored, &user, entry.role, seq, None)
            .ok_or_else(|| format!("entry {seq} is not a chat message"))?;
        copies.push(copy);
    }
    Ok(copies)
}

/// Reads users' logs for `$sync`, on any node.
#[derive(Clone)]
pub(crate) struct InboxReader {
    streams: InboxStreams,
}

impl InboxReader {
    pub(super) fn new(streams: InboxStreams) -> InboxReader {
        InboxReader { streams }
    }

    /// Up to `limit` entries of `user`'s log from seq `from` on, and the seq the user's
    /// next entry gets.
    pub(crate) async fn read(
        &self,
        user: &str,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<LogEntry>, u64), ReadError> {
        let (stream, subject) = self.streams.of(user);
        match tokio::time::timeout(READ_TIMEOUT, read(stream, &subject, from, limit)).await {
            Ok(result) => result,
            Err(_) => Err(ReadError::TimedOut { subject }),
        }
    }
}

async fn read(
    stream: &stream::Stream,
    subject: &str,
    from: u64,
    limit: usize,
) -> Result<(Vec<LogEntry>, u64), ReadError> {
    let malformed = |what: String| ReadError::Malformed {
        subject: subject.to_string(),
        what,
    };
    let last = read_last(stream, subject)
        .await?
        .map(|(_, last)| last)
        .unwrap_or_default();
    let next = last.next_seq;
    let mut entries = Vec::new();
    if from >= next || limit == 0 {
        return Ok((entries, next));
    }
    let consumer_error = |source: async_nats::Error| ReadError::Consumer {
        subject: subject.to_string(),
        source,
    };
    // The log is read from its first message still held: entries carry their seq, the
    // stream's own sequence does not map to it.
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: subject.to_string(),
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| consumer_error(e.into()))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| consumer_error(e.into()))?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| consumer_error(e.into()))?;
        let stream_seq = message
            .info()
            .map_err(|e| consumer_error(e.to_string().into()))?
            .stream_sequence;
        let (first, chunk) =
            chunk_of(message.headers.as_ref(), message.payload.clone()).map_err(malformed)?;
        for (seq, entry) in (first..).zip(chunk) {
            if seq >= from && entries.len() < limit {
                entries.push(LogEntry {
                    seq,
                    role: entry.role,
                    id: None,
                    message: super::decode(entry.record).ok(),
                });
            }
            if entries.len() >= limit || seq + 1 >= next {
                return Ok((entries, next));
            }
        }
        // The last message read (a marker holds no entries).
        if stream_seq >= last.stream_seq {
            break;
        }
    }
    Ok((entries, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_keep_names_apart() {
        assert_eq!(floor_char_boundary("aé", 2), 1);
        assert_eq!(floor_char_boundary("ab", 5), 2);
        assert_ne!(message_id("ab", "c", "d"), message_id("a", "bc", "d"));
        assert_ne!(message_id("a", "b", "cd"), message_id("a", "bc", "d"));
        assert_eq!(message_id("alice", "m1", "bob"), "5:alice2:m1bob");
    }

    #[test]
    fn a_users_shard_is_stable() {
        // FNV-1a of "alice": the shard must never change between builds.
        assert_eq!(fnv1a(b"alice"), 0x508b_2abb_65a0_3907);
    }
}
