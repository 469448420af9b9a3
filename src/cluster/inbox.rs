//! Chat across nodes: every user's inbox log lives in JetStream, in one of a few streams
//! (`TERN_INBOX_<shard>`, the user's shard by a stable hash of the name), on the subject
//! `tern.inbox.<shard>.<user>`. Each entry is the chat message as stored on one node
//! (stamped with its sender) with the user's `seq` and the user's role in headers.
//!
//! Numbering without a sequence service: a node appends entry `n + 1` only on the
//! condition that the subject's last message is the one it knows as entry `n`
//! (`Nats-Expected-Last-Subject-Sequence`); when another node appended meanwhile, the
//! append is refused, the node reads the subject's last entry and tries again. So two
//! nodes never hand out the same seq, and seqs have no gap. `Nats-Msg-Id` (sender,
//! message id, recipient) makes a resend, on any node, within the duplicate window, the
//! message already stored. A chat message is acknowledged once every recipient's append
//! is (replicated, on a majority of the NATS servers).
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
use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tern_storage::StorageError;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{subject, ATTEMPT_TIMEOUT};
use crate::config::ImConfig;
use crate::im::inbox::for_recipient;
use crate::im::sync::LogEntry;
use crate::protocol::Message;
use crate::router::{InboxAppend, NodeLease, RouterHandle};

/// Header with the entry's seq in its user's log.
const SEQ: &str = "Tern-Seq";
/// Header with the user's role (`ROLE_RECEIVED` / `ROLE_SENT`).
const ROLE: &str = "Tern-Role";
/// Header with the user whose log holds the entry (subjects escape names).
const USER: &str = "Tern-User";

/// Entries taken from publishers and not yet appended, over all users: past this the
/// appender stops taking messages and publishers wait.
const MAX_QUEUED: usize = 65_536;

/// Users whose last entry the appender remembers while they are idle.
const MAX_REMEMBERED: usize = 65_536;

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
    #[error("reading {subject} took longer than {READ_TIMEOUT:?}")]
    TimedOut { subject: String },
    #[error("no answer reading the last entry of {subject} within {ATTEMPT_TIMEOUT:?}")]
    NoAnswer { subject: String },
}

/// The inbox streams, one per shard.
#[derive(Clone)]
pub(crate) struct InboxStreams {
    jetstream: jetstream::Context,
    streams: Arc<[stream::Stream]>,
    /// How long an append is retried (leader elections, a lost reply) before the message
    /// is refused to its publisher (`cluster.append_timeout_ms`).
    retry_for: Duration,
}

impl InboxStreams {
    /// Opens (or creates) the `shards` streams with `replicas`; the log of a user keeps
    /// its last `im.inbox_max_messages` entries, and resends are recognised for
    /// `im.dedup_window_secs`. An append is retried for `retry_for`.
    pub(crate) async fn open(
        jetstream: &jetstream::Context,
        shards: u32,
        replicas: usize,
        im: &ImConfig,
        retry_for: Duration,
    ) -> Result<InboxStreams, InboxError> {
        let mut streams = Vec::new();
        for shard in 0..shards {
            let name = format!("TERN_INBOX_{shard}");
            let config = stream::Config {
                name: name.clone(),
                subjects: vec![subject::inbox_logs(shard)],
                max_messages_per_subject: i64::try_from(im.inbox_max_messages).unwrap_or(i64::MAX),
                duplicate_window: Duration::from_secs(im.dedup_window_secs.max(1)),
                num_replicas: replicas,
                storage: stream::StorageType::File,
                republish: Some(stream::Republish {
                    source: subject::inbox_logs(shard),
                    destination: format!("{}.>", subject::DELIVER),
                    headers_only: false,
                }),
                ..Default::default()
            };
            let stream = jetstream
                .get_or_create_stream(config)
                .await
                .map_err(|source| InboxError::Stream { name, source })?;
            streams.push(stream);
        }
        Ok(InboxStreams {
            jetstream: jetstream.clone(),
            streams: streams.into(),
            retry_for,
        })
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

/// The last entry of a user's log as a node knows it: what the next append is
/// conditional on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Last {
    /// The seq the next entry gets (0 for an empty log).
    next_seq: u64,
    /// The stream sequence of the last entry (0: none).
    stream_seq: u64,
}

/// Reads the last entry of `subject` (from the stream's leader), and its message id.
async fn read_last(
    stream: &stream::Stream,
    subject: &str,
) -> Result<(Last, Option<String>), ReadError> {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => {
            let seq = header_u64(&message.headers, SEQ).unwrap_or(0);
            let id = message
                .headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str().to_string());
            let last = Last {
                next_seq: seq.saturating_add(1),
                stream_seq: message.sequence,
            };
            Ok((last, id))
        }
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
            Ok((Last::default(), None))
        }
        Err(source) => Err(ReadError::Last {
            subject: subject.to_string(),
            source,
        }),
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name).and_then(|v| v.as_str().parse().ok())
}

/// One recipient's entry waiting to be appended.
struct Entry {
    record: Bytes,
    role: u8,
    msg_id: String,
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

/// A user's log as the appender sees it.
#[derive(Default)]
struct UserLog {
    last: Option<Last>,
    queue: VecDeque<Entry>,
    busy: bool,
}

/// Appends the chat messages the router hands over, in the order it hands them over
/// per user, one append in flight per user (each is conditional on the previous one).
///
/// Nothing is appended while the node's `lease` does not hold: the senders' sessions may
/// live on another node by then, which their resends go to.
pub(super) async fn append(
    streams: InboxStreams,
    mut requests: mpsc::Receiver<InboxAppend>,
    lease: Arc<NodeLease>,
) {
    let mut logs: HashMap<String, UserLog> = HashMap::new();
    let mut running = FuturesUnordered::new();
    let mut queued = 0usize;
    loop {
        tokio::select! {
            request = requests.recv(), if queued < MAX_QUEUED => {
                let Some(request) = request else { break };
                for (user, entry) in entries(request) {
                    queued += 1;
                    let log = logs.entry(user.clone()).or_default();
                    log.queue.push_back(entry);
                    if !log.busy {
                        if let Some(next) = start(&streams, &lease, &user, log) {
                            running.push(next);
                        }
                    }
                }
            }
            Some((user, entry, result)) = running.next(), if !running.is_empty() => {
                queued = queued.saturating_sub(1);
                let entry: Entry = entry;
                let Some(log) = logs.get_mut(&user) else { continue };
                log.busy = false;
                match result {
                    Ok(last) => {
                        log.last = last;
                        entry.request.settle(Ok(()));
                    }
                    Err(what) => {
                        log.last = None;
                        tracing::warn!(%user, "chat message not stored: {what}");
                        entry.request.settle(Err(what));
                    }
                }
                match start(&streams, &lease, &user, log) {
                    Some(next) => running.push(next),
                    None if logs.len() > MAX_REMEMBERED => {
                        logs.remove(&user);
                    }
                    None => {}
                }
            }
        }
    }
}

/// A user's append under way: the user, the entry, and the log's last entry after it
/// (`None`: unknown) or why it failed.
type Appending = std::pin::Pin<
    Box<dyn std::future::Future<Output = (String, Entry, Result<Option<Last>, String>)> + Send>,
>;

/// Starts appending the next entry of `user`'s queue, if any.
fn start(
    streams: &InboxStreams,
    lease: &Arc<NodeLease>,
    user: &str,
    log: &mut UserLog,
) -> Option<Appending> {
    let entry = log.queue.pop_front()?;
    log.busy = true;
    let (stream, subject) = streams.of(user);
    let stream = stream.clone();
    let jetstream = streams.jetstream.clone();
    let last = log.last;
    let user = user.to_string();
    let lease = lease.clone();
    let retry_for = streams.retry_for;
    Some(Box::pin(async move {
        let target = Target {
            jetstream: &jetstream,
            stream: &stream,
            lease: &lease,
            subject: &subject,
            user: &user,
        };
        let result = append_one(&target, &entry, last, retry_for).await;
        (user, entry, result)
    }))
}

/// The entries of a chat message, one per recipient, sharing its encoding.
fn entries(request: InboxAppend) -> Vec<(String, Entry)> {
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
    // Without a client message id, one of the node's own: a retried append whose first
    // attempt was stored after all is then recognised too.
    let msgid = plan.msgid.unwrap_or_else(|| format!("~{}", nuid::next()));
    plan.recipients
        .into_iter()
        .map(|(user, role)| {
            let msg_id = message_id(&from, &msgid, &user);
            let entry = Entry {
                record: record.clone(),
                role,
                msg_id,
                request: shared.clone(),
            };
            (user, entry)
        })
        .collect()
}

/// `Nats-Msg-Id` of one recipient's entry: unambiguous whatever the names hold.
fn message_id(from: &str, msgid: &str, user: &str) -> String {
    format!("{}:{from}{}:{msgid}{user}", from.len(), msgid.len())
}

/// Appends `entry` to `user`'s log, after `last` (read from the stream when unknown or
/// stale); retried for `retry_for`.
async fn append_one(
    target: &Target<'_>,
    entry: &Entry,
    last: Option<Last>,
    retry_for: Duration,
) -> Result<Option<Last>, String> {
    let Target {
        jetstream,
        stream,
        lease,
        subject,
        user,
    } = *target;
    let deadline = Instant::now() + retry_for;
    let mut backoff = super::Backoff::for_appends();
    let mut known = last;
    loop {
        let last = match known {
            Some(last) => last,
            None => match tokio::time::timeout(ATTEMPT_TIMEOUT, read_last(stream, subject))
                .await
                .unwrap_or_else(|_| {
                    Err(ReadError::NoAnswer {
                        subject: subject.to_string(),
                    })
                }) {
                Ok((last, id)) if id.as_deref() == Some(&*entry.msg_id) => {
                    // An earlier attempt was stored after all.
                    return Ok(Some(last));
                }
                Ok((last, _)) => last,
                Err(e) => {
                    wait(&mut backoff, deadline, retry_for, &e.to_string()).await?;
                    continue;
                }
            },
        };
        if !lease.holds() {
            return Err("this node lost its lease in the cluster".to_string());
        }
        let publish = jetstream::message::PublishMessage::build()
            .payload(entry.record.clone())
            .message_id(&entry.msg_id)
            .expected_last_subject_sequence(last.stream_seq)
            .header(SEQ, last.next_seq.to_string().as_str())
            .header(ROLE, entry.role.to_string().as_str())
            .header(USER, user);
        let attempt = async {
            match jetstream.send_publish(subject.to_string(), publish).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            }
        };
        let Ok(acked) = tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await else {
            // Perhaps stored after all: the next attempt reads the log's last entry first.
            known = None;
            wait(&mut backoff, deadline, retry_for, "no answer to the append").await?;
            continue;
        };
        match acked {
            // Stored before (a resend, or an attempt whose reply was lost): the log's
            // last entry is read again before the next append.
            Ok(ack) if ack.duplicate => return Ok(None),
            Ok(ack) => {
                return Ok(Some(Last {
                    next_seq: last.next_seq + 1,
                    stream_seq: ack.sequence,
                }))
            }
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                // Another node appended to this log: read its last entry, and go on.
                known = None;
            }
            Err(e) => {
                known = None;
                wait(&mut backoff, deadline, retry_for, &e.to_string()).await?;
            }
        }
    }
}

/// Where one user's entries go.
#[derive(Clone, Copy)]
struct Target<'a> {
    jetstream: &'a jetstream::Context,
    stream: &'a stream::Stream,
    lease: &'a NodeLease,
    subject: &'a str,
    user: &'a str,
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
        let copy = received
            .headers
            .as_ref()
            .ok_or_else(|| "no headers".to_string())
            .and_then(|headers| recipient_copy(headers, received.payload));
        let copy = match copy {
            Ok(copy) => Arc::new(copy),
            Err(e) => {
                tracing::warn!(subject = %received.subject, "dropped an inbox entry: {e}");
                continue;
            }
        };
        if router
            .publish_remote(&copy, Some(&via), None)
            .await
            .is_err()
        {
            break;
        }
    }
}

/// The copy of an inbox entry for its user (on the user's inbox topic, with `seq`).
fn recipient_copy(headers: &HeaderMap, payload: Bytes) -> Result<Message, String> {
    let user = headers
        .get(USER)
        .ok_or_else(|| format!("no {USER} header"))?
        .as_str()
        .to_string();
    let seq = header_u64(headers, SEQ).ok_or_else(|| format!("no {SEQ} header"))?;
    let role = header_u64(headers, ROLE)
        .and_then(|r| u8::try_from(r).ok())
        .ok_or_else(|| format!("no {ROLE} header"))?;
    let stored = super::decode(payload)?;
    for_recipient(&stored, &user, role, seq, None).ok_or_else(|| "not a chat message".to_string())
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
    let (last, _) = read_last(stream, subject).await?;
    let next = last.next_seq;
    let mut entries = Vec::new();
    if from >= next || limit == 0 {
        return Ok((entries, next));
    }
    let consumer_error = |source: async_nats::Error| ReadError::Consumer {
        subject: subject.to_string(),
        source,
    };
    // The log is read from its first entry still held: entries carry their seq, the
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
        let Some(headers) = message.headers.as_ref() else {
            continue;
        };
        let Some(seq) = header_u64(headers, SEQ) else {
            continue;
        };
        if seq >= from {
            let role = header_u64(headers, ROLE)
                .and_then(|r| u8::try_from(r).ok())
                .unwrap_or_default();
            entries.push(LogEntry {
                seq,
                role,
                id: None,
                message: super::decode(message.payload.clone()).ok(),
            });
        }
        if entries.len() >= limit || seq + 1 >= next {
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
