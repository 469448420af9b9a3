//! Value encodings of [`RocksStore`](crate::RocksStore): compact hand-written binary records.
//!
//! Every record starts with a version byte so that the format can evolve without a migration
//! of old values; integers are big-endian, strings and byte fields length-prefixed:
//!
//! ```text
//! message record (retained, messages): 1  body
//! queue record, version 2 (written):   2  state(u8: 0 pending, 1 released)
//!          flags(u8: 1 referenced)  [message_id(u64)]  body (empty payload if referenced)
//! queue record, version 1 (read only): 1  state(u8)  body
//! body:    qos(u8)  flags(u8: 1 retain, 2 has expiry)  [expires_at_ms(u64)]
//!          topic(u16 len + UTF-8)  properties(u32 len + bytes)  payload(u32 len + bytes)
//! session record: 1  protocol_level(u8)  expiry_interval_secs(u32)
//!          flags(u8: 1 has disconnected_at, 2 has user)  [disconnected_at_ms(u64)]
//!          [user(u16 len + UTF-8)]
//!          count(u32)  count x { filter(u16 len + UTF-8)  options(u8)
//!                                flags(u8: 1 has identifier)  [identifier(u32)] }
//! user record:  1  flags(u8: 1 operator)  created_at_ms(u64)  password_hash(u16 len + UTF-8)
//! group record: 1  created_at_ms(u64)  count(u32)  count x member(u16 len + UTF-8)
//! inbox record: 1  message_id(u64)  role(u8)
//! mark record:  1  id(u64)  seq(u64)  at_ms(u64)
//! ```
//!
//! Queue records went to version 2 when they gained message references; version 1 records,
//! written by earlier builds, still decode (as unreferenced entries) and get their state
//! rewritten in place as version 1. The state byte is the second byte in both versions.
//!
//! The client id of a session, the seq of a queue entry, a user's or group's id and the seq
//! of an inbox entry live in the key only. Decoding works on [`Bytes`], so payload and
//! properties are slices of the value (no copy), and never panics: a short, overlong or
//! otherwise invalid value is a [`DecodeError`] that the store turns into
//! [`StorageError::Corrupt`] naming the key.

use bytes::{Buf, Bytes};

use crate::{
    InboxEntry, Mark, QueueState, QueuedMessage, StorageError, StoredGroup, StoredMessage,
    StoredSession, StoredSubscription, StoredUser,
};

/// Version byte written at the start of every record but queue records.
pub(crate) const RECORD_VERSION: u8 = 1;
/// Version byte written at the start of queue records (which also read version 1).
pub(crate) const QUEUE_RECORD_VERSION: u8 = 2;
/// The queue record version before message references: state, then the body.
const QUEUE_RECORD_V1: u8 = 1;

const FLAG_RETAIN: u8 = 1;
const FLAG_EXPIRES: u8 = 2;
const FLAG_DISCONNECTED: u8 = 1;
const FLAG_USER: u8 = 2;
const FLAG_IDENTIFIER: u8 = 1;
const FLAG_REFERENCED: u8 = 1;
const FLAG_OPERATOR: u8 = 1;

const STATE_PENDING: u8 = 0;
const STATE_RELEASED: u8 = 1;

/// Why a value did not decode (the caller adds which key it was).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodeError(pub(crate) String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

type DecodeResult<T> = Result<T, DecodeError>;

fn too_long(what: &str, len: usize, max: u64) -> StorageError {
    StorageError::invalid(format!("{what} of {len} bytes (at most {max})"))
}

fn len16(what: &str, len: usize) -> Result<u16, StorageError> {
    u16::try_from(len).map_err(|_| too_long(what, len, u16::MAX.into()))
}

fn len32(what: &str, len: usize) -> Result<u32, StorageError> {
    u32::try_from(len).map_err(|_| too_long(what, len, u32::MAX.into()))
}

/// What [`encode_message`] would refuse.
pub(crate) fn check_message(message: &StoredMessage) -> Result<(), StorageError> {
    if message.qos > 2 {
        return Err(StorageError::invalid(format!("QoS {}", message.qos)));
    }
    len16("topic", message.topic.len())?;
    len32("properties", message.properties.len())?;
    len32("payload", message.payload.len())?;
    Ok(())
}

/// What [`encode_user`] would refuse (the user id is the key's business).
pub(crate) fn check_user(user: &StoredUser) -> Result<(), StorageError> {
    len16("password hash", user.password_hash.len())?;
    Ok(())
}

/// What [`encode_group`] would refuse (the group id is the key's business).
pub(crate) fn check_group(group: &StoredGroup) -> Result<(), StorageError> {
    len32("member list", group.members.len())?;
    for member in &group.members {
        len16("group member id", member.len())?;
    }
    Ok(())
}

/// What [`encode_session`] would refuse.
pub(crate) fn check_session(session: &StoredSession) -> Result<(), StorageError> {
    len16("session user", session.user.len())?;
    len32("subscription list", session.subscriptions.len())?;
    for sub in &session.subscriptions {
        len16("subscription filter", sub.filter.len())?;
    }
    Ok(())
}

fn body_len(message: &StoredMessage, payload: &[u8]) -> usize {
    2 + 8 + 2 + message.topic.len() + 4 + message.properties.len() + 4 + payload.len()
}

/// Writes the body of `message` with `payload` in place of its own (empty for a referenced
/// queue entry).
fn put_body(
    out: &mut Vec<u8>,
    message: &StoredMessage,
    payload: &[u8],
) -> Result<(), StorageError> {
    check_message(message)?;
    let mut flags = 0;
    if message.retain {
        flags |= FLAG_RETAIN;
    }
    if message.expires_at_ms.is_some() {
        flags |= FLAG_EXPIRES;
    }
    out.push(message.qos);
    out.push(flags);
    if let Some(at) = message.expires_at_ms {
        out.extend_from_slice(&at.to_be_bytes());
    }
    out.extend_from_slice(&len16("topic", message.topic.len())?.to_be_bytes());
    out.extend_from_slice(message.topic.as_bytes());
    out.extend_from_slice(&len32("properties", message.properties.len())?.to_be_bytes());
    out.extend_from_slice(&message.properties);
    out.extend_from_slice(&len32("payload", payload.len())?.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// The record of a retained message or of a stored chat message.
pub(crate) fn encode_message(message: &StoredMessage) -> Result<Vec<u8>, StorageError> {
    let mut out = Vec::with_capacity(1 + body_len(message, &message.payload));
    out.push(RECORD_VERSION);
    put_body(&mut out, message, &message.payload)?;
    Ok(out)
}

/// The record of a queue entry (version 2). A referenced entry stores the message id and
/// an empty payload, whatever payload it was given.
pub(crate) fn encode_queued(queued: &QueuedMessage) -> Result<Vec<u8>, StorageError> {
    let payload: &[u8] = match queued.message_ref {
        Some(_) => &[],
        None => &queued.message.payload,
    };
    let mut out = Vec::with_capacity(3 + 8 + body_len(&queued.message, payload));
    out.push(QUEUE_RECORD_VERSION);
    out.push(state_byte(queued.state));
    match queued.message_ref {
        Some(id) => {
            out.push(FLAG_REFERENCED);
            out.extend_from_slice(&id.to_be_bytes());
        }
        None => out.push(0),
    }
    put_body(&mut out, &queued.message, payload)?;
    Ok(out)
}

fn state_byte(state: QueueState) -> u8 {
    match state {
        QueueState::Pending => STATE_PENDING,
        QueueState::Released => STATE_RELEASED,
    }
}

/// Rewrites the state of an encoded queue record in place: a state change does not need the
/// message decoded and re-encoded.
/// Both queue record versions keep the state in their second byte.
pub(crate) fn set_queued_state(value: &mut [u8], state: QueueState) -> DecodeResult<()> {
    match value {
        [QUEUE_RECORD_V1 | QUEUE_RECORD_VERSION, old, ..]
            if *old == STATE_PENDING || *old == STATE_RELEASED =>
        {
            *old = state_byte(state);
            Ok(())
        }
        [QUEUE_RECORD_V1 | QUEUE_RECORD_VERSION, old, ..] => {
            Err(DecodeError(format!("unknown queue state {old}")))
        }
        [QUEUE_RECORD_V1 | QUEUE_RECORD_VERSION] => {
            Err(DecodeError("truncated queue state".into()))
        }
        [version, ..] => Err(unknown_version(*version, QUEUE_RECORD_VERSION)),
        [] => Err(DecodeError("empty value".into())),
    }
}

/// The record of a session's metadata (its client id is the key).
pub(crate) fn encode_session(session: &StoredSession) -> Result<Vec<u8>, StorageError> {
    check_session(session)?;
    let subs_len: usize = session
        .subscriptions
        .iter()
        .map(|s| 2 + s.filter.len() + 2 + 4)
        .sum();
    let mut out = Vec::with_capacity(1 + 1 + 4 + 1 + 8 + 4 + subs_len);
    out.push(RECORD_VERSION);
    out.push(session.protocol_level);
    out.extend_from_slice(&session.expiry_interval_secs.to_be_bytes());
    // The user was added after the first release of this record: a flag, so records
    // written before it still decode (as an unknown user).
    let mut flags = 0;
    if session.disconnected_at_ms.is_some() {
        flags |= FLAG_DISCONNECTED;
    }
    if !session.user.is_empty() {
        flags |= FLAG_USER;
    }
    out.push(flags);
    if let Some(at) = session.disconnected_at_ms {
        out.extend_from_slice(&at.to_be_bytes());
    }
    if !session.user.is_empty() {
        out.extend_from_slice(&len16("session user", session.user.len())?.to_be_bytes());
        out.extend_from_slice(session.user.as_bytes());
    }
    out.extend_from_slice(&len32("subscription list", session.subscriptions.len())?.to_be_bytes());
    for sub in &session.subscriptions {
        out.extend_from_slice(&len16("subscription filter", sub.filter.len())?.to_be_bytes());
        out.extend_from_slice(sub.filter.as_bytes());
        out.push(sub.options);
        match sub.identifier {
            Some(id) => {
                out.push(FLAG_IDENTIFIER);
                out.extend_from_slice(&id.to_be_bytes());
            }
            None => out.push(0),
        }
    }
    Ok(out)
}

/// The record of a user (its id is the key).
pub(crate) fn encode_user(user: &StoredUser) -> Result<Vec<u8>, StorageError> {
    let hash_len = len16("password hash", user.password_hash.len())?;
    let mut out = Vec::with_capacity(1 + 1 + 8 + 2 + user.password_hash.len());
    out.push(RECORD_VERSION);
    out.push(if user.operator { FLAG_OPERATOR } else { 0 });
    out.extend_from_slice(&user.created_at_ms.to_be_bytes());
    out.extend_from_slice(&hash_len.to_be_bytes());
    out.extend_from_slice(user.password_hash.as_bytes());
    Ok(out)
}

/// The record of a group (its id is the key).
pub(crate) fn encode_group(group: &StoredGroup) -> Result<Vec<u8>, StorageError> {
    check_group(group)?;
    let members_len: usize = group.members.iter().map(|m| 2 + m.len()).sum();
    let mut out = Vec::with_capacity(1 + 8 + 4 + members_len);
    out.push(RECORD_VERSION);
    out.extend_from_slice(&group.created_at_ms.to_be_bytes());
    out.extend_from_slice(&len32("member list", group.members.len())?.to_be_bytes());
    for member in &group.members {
        out.extend_from_slice(&len16("group member id", member.len())?.to_be_bytes());
        out.extend_from_slice(member.as_bytes());
    }
    Ok(out)
}

/// The record of an inbox entry (user and seq are the key): fixed 10 bytes.
pub(crate) fn encode_inbox(entry: &InboxEntry) -> [u8; 10] {
    let mut out = [0; 10];
    out[0] = RECORD_VERSION;
    out[1..9].copy_from_slice(&entry.message_id.to_be_bytes());
    out[9] = entry.role;
    out
}

/// A `u64` value (a queue or inbox high-water mark).
pub(crate) fn decode_u64(value: &[u8]) -> DecodeResult<u64> {
    <[u8; 8]>::try_from(value)
        .map(u64::from_be_bytes)
        .map_err(|_| DecodeError(format!("{} bytes where 8 were expected", value.len())))
}

fn unknown_version(version: u8, newest: u8) -> DecodeError {
    DecodeError(format!(
        "unknown record version {version} (this build reads up to {newest})"
    ))
}

/// Bounds-checked reads from a value; every read that would run past the end is an error.
struct Reader {
    buf: Bytes,
}

impl Reader {
    fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    fn need(&self, n: usize, what: &str) -> DecodeResult<()> {
        if self.buf.remaining() < n {
            return Err(DecodeError(format!(
                "truncated {what}: {n} bytes needed, {} left",
                self.buf.remaining()
            )));
        }
        Ok(())
    }

    fn u8(&mut self, what: &str) -> DecodeResult<u8> {
        self.need(1, what)?;
        Ok(self.buf.get_u8())
    }

    fn u16(&mut self, what: &str) -> DecodeResult<u16> {
        self.need(2, what)?;
        Ok(self.buf.get_u16())
    }

    fn u32(&mut self, what: &str) -> DecodeResult<u32> {
        self.need(4, what)?;
        Ok(self.buf.get_u32())
    }

    fn u64(&mut self, what: &str) -> DecodeResult<u64> {
        self.need(8, what)?;
        Ok(self.buf.get_u64())
    }

    /// `len` bytes as a slice of the value (no copy).
    fn bytes(&mut self, len: usize, what: &str) -> DecodeResult<Bytes> {
        self.need(len, what)?;
        Ok(self.buf.split_to(len))
    }

    fn bytes32(&mut self, what: &str) -> DecodeResult<Bytes> {
        let len = self.u32(what)?;
        let len = usize::try_from(len).map_err(|_| DecodeError(format!("{what} too long")))?;
        self.bytes(len, what)
    }

    fn string16(&mut self, what: &str) -> DecodeResult<String> {
        let len = usize::from(self.u16(what)?);
        let bytes = self.bytes(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError(format!("{what} is not UTF-8")))
    }

    fn version(&mut self) -> DecodeResult<()> {
        match self.u8("version")? {
            RECORD_VERSION => Ok(()),
            other => Err(unknown_version(other, RECORD_VERSION)),
        }
    }

    fn finish(self) -> DecodeResult<()> {
        if self.buf.has_remaining() {
            return Err(DecodeError(format!(
                "{} trailing bytes",
                self.buf.remaining()
            )));
        }
        Ok(())
    }

    fn body(&mut self) -> DecodeResult<StoredMessage> {
        let qos = self.u8("qos")?;
        if qos > 2 {
            return Err(DecodeError(format!("QoS {qos}")));
        }
        let flags = self.u8("message flags")?;
        if flags & !(FLAG_RETAIN | FLAG_EXPIRES) != 0 {
            return Err(DecodeError(format!("unknown message flags {flags:#04x}")));
        }
        let expires_at_ms = if flags & FLAG_EXPIRES != 0 {
            Some(self.u64("expiry")?)
        } else {
            None
        };
        let topic = self.string16("topic")?;
        let properties = self.bytes32("properties")?;
        let payload = self.bytes32("payload")?;
        Ok(StoredMessage {
            topic,
            payload,
            qos,
            retain: flags & FLAG_RETAIN != 0,
            properties,
            expires_at_ms,
        })
    }
}

/// Decodes a message record.
pub(crate) fn decode_message(value: Bytes) -> DecodeResult<StoredMessage> {
    let mut r = Reader::new(value);
    r.version()?;
    let message = r.body()?;
    r.finish()?;
    Ok(message)
}

/// Decodes a queue record of either version. A referenced entry comes back with its
/// `message_ref` set and an empty payload: resolving it is the store's business.
pub(crate) fn decode_queued(value: Bytes) -> DecodeResult<QueuedMessage> {
    let mut r = Reader::new(value);
    let version = r.u8("version")?;
    if version != QUEUE_RECORD_V1 && version != QUEUE_RECORD_VERSION {
        return Err(unknown_version(version, QUEUE_RECORD_VERSION));
    }
    let state = match r.u8("queue state")? {
        STATE_PENDING => QueueState::Pending,
        STATE_RELEASED => QueueState::Released,
        other => return Err(DecodeError(format!("unknown queue state {other}"))),
    };
    let message_ref = if version == QUEUE_RECORD_V1 {
        None
    } else {
        match r.u8("queue flags")? {
            0 => None,
            FLAG_REFERENCED => Some(r.u64("message id")?),
            other => return Err(DecodeError(format!("unknown queue flags {other:#04x}"))),
        }
    };
    let message = r.body()?;
    r.finish()?;
    if message_ref.is_some() && !message.payload.is_empty() {
        return Err(DecodeError(format!(
            "referenced entry with a {}-byte payload of its own",
            message.payload.len()
        )));
    }
    Ok(QueuedMessage {
        message,
        state,
        message_ref,
    })
}

/// Decodes a user record; `user` comes from its key.
pub(crate) fn decode_user(user: String, value: Bytes) -> DecodeResult<StoredUser> {
    let mut r = Reader::new(value);
    r.version()?;
    let operator = match r.u8("user flags")? {
        0 => false,
        FLAG_OPERATOR => true,
        other => return Err(DecodeError(format!("unknown user flags {other:#04x}"))),
    };
    let created_at_ms = r.u64("creation time")?;
    let password_hash = r.string16("password hash")?;
    r.finish()?;
    Ok(StoredUser {
        user,
        password_hash,
        operator,
        created_at_ms,
    })
}

/// Decodes a group record; `gid` comes from its key.
pub(crate) fn decode_group(gid: String, value: Bytes) -> DecodeResult<StoredGroup> {
    let mut r = Reader::new(value);
    r.version()?;
    let created_at_ms = r.u64("creation time")?;
    let count = r.u32("member count")?;
    // Each member takes at least its 2-byte length: a count larger than that allows is
    // corrupt, and must not be trusted to size an allocation.
    let count = usize::try_from(count)
        .ok()
        .filter(|&c| c <= r.buf.remaining() / 2)
        .ok_or_else(|| DecodeError(format!("member count {count} exceeds the value")))?;
    let mut members = Vec::with_capacity(count);
    for _ in 0..count {
        members.push(r.string16("group member id")?);
    }
    r.finish()?;
    Ok(StoredGroup {
        gid,
        members,
        created_at_ms,
    })
}

/// Decodes an inbox record, straight from the slice: inboxes are read a page of small fixed
/// records at a time, not worth a copy each.
pub(crate) fn decode_inbox(value: &[u8]) -> DecodeResult<InboxEntry> {
    match value {
        [RECORD_VERSION, rest @ ..] => match <[u8; 9]>::try_from(rest) {
            Ok([id @ .., role]) => Ok(InboxEntry {
                message_id: u64::from_be_bytes(id),
                role,
            }),
            Err(_) => Err(DecodeError(format!(
                "{} bytes where 10 were expected",
                value.len()
            ))),
        },
        [version, ..] => Err(unknown_version(*version, RECORD_VERSION)),
        [] => Err(DecodeError("empty value".into())),
    }
}

/// Bytes of a mark record.
const MARK_LEN: usize = 25;

pub(crate) fn encode_mark(mark: &Mark) -> [u8; MARK_LEN] {
    let mut out = [0; MARK_LEN];
    out[0] = RECORD_VERSION;
    out[1..9].copy_from_slice(&mark.id.to_be_bytes());
    out[9..17].copy_from_slice(&mark.seq.to_be_bytes());
    out[17..25].copy_from_slice(&mark.at_ms.to_be_bytes());
    out
}

pub(crate) fn decode_mark(value: &[u8]) -> DecodeResult<Mark> {
    let field = |at: usize| {
        value
            .get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
    };
    match value.first() {
        Some(&RECORD_VERSION) if value.len() == MARK_LEN => match (field(1), field(9), field(17)) {
            (Some(id), Some(seq), Some(at_ms)) => Ok(Mark { id, seq, at_ms }),
            _ => Err(DecodeError("a mark record cut short".into())),
        },
        Some(&RECORD_VERSION) => Err(DecodeError(format!(
            "{} bytes where {MARK_LEN} were expected",
            value.len()
        ))),
        Some(version) => Err(unknown_version(*version, RECORD_VERSION)),
        None => Err(DecodeError("empty value".into())),
    }
}

/// The mark record to keep of a stored one and raises (RocksDB's merge of `marks`): the one
/// with the highest id. A value that does not decode loses to any that does, so one bad
/// write cannot stop a mark from moving; only when none decodes is the merge refused.
pub(crate) fn merge_marks<'v>(
    existing: Option<&'v [u8]>,
    operands: impl IntoIterator<Item = &'v [u8]>,
) -> Option<Vec<u8>> {
    existing
        .into_iter()
        .chain(operands)
        .filter_map(|value| decode_mark(value).ok())
        .max_by_key(|mark| mark.id)
        .map(|mark| encode_mark(&mark).to_vec())
}

/// Decodes a session record; `client_id` comes from its key.
pub(crate) fn decode_session(client_id: String, value: Bytes) -> DecodeResult<StoredSession> {
    let mut r = Reader::new(value);
    r.version()?;
    let protocol_level = r.u8("protocol level")?;
    let expiry_interval_secs = r.u32("expiry interval")?;
    let flags = r.u8("session flags")?;
    if flags & !(FLAG_DISCONNECTED | FLAG_USER) != 0 {
        return Err(DecodeError(format!("unknown session flags {flags:#04x}")));
    }
    let disconnected_at_ms = if flags & FLAG_DISCONNECTED != 0 {
        Some(r.u64("disconnection time")?)
    } else {
        None
    };
    let user = if flags & FLAG_USER != 0 {
        r.string16("session user")?
    } else {
        String::new()
    };
    let count = r.u32("subscription count")?;
    // Each subscription takes at least 4 bytes: a count larger than that allows is corrupt,
    // and must not be trusted to size an allocation.
    let count = usize::try_from(count)
        .ok()
        .filter(|&c| c <= r.buf.remaining() / 4)
        .ok_or_else(|| DecodeError(format!("subscription count {count} exceeds the value")))?;
    let mut subscriptions = Vec::with_capacity(count);
    for _ in 0..count {
        let filter = r.string16("subscription filter")?;
        let options = r.u8("subscription options")?;
        let identifier = match r.u8("subscription flags")? {
            0 => None,
            FLAG_IDENTIFIER => Some(r.u32("subscription identifier")?),
            other => {
                return Err(DecodeError(format!(
                    "unknown subscription flags {other:#04x}"
                )))
            }
        };
        subscriptions.push(StoredSubscription {
            filter,
            options,
            identifier,
        });
    }
    r.finish()?;
    Ok(StoredSession {
        client_id,
        user,
        protocol_level,
        expiry_interval_secs,
        disconnected_at_ms,
        subscriptions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(expires: Option<u64>) -> StoredMessage {
        StoredMessage {
            topic: "chat/room/7".into(),
            payload: Bytes::from_static(b"hello there"),
            qos: 2,
            retain: true,
            properties: Bytes::from_static(&[0x01, 0x01]),
            expires_at_ms: expires,
        }
    }

    fn session() -> StoredSession {
        StoredSession {
            client_id: "phone-1".into(),
            user: "alice".into(),
            protocol_level: 5,
            expiry_interval_secs: u32::MAX,
            disconnected_at_ms: Some(1_700_000_000_000),
            subscriptions: vec![
                StoredSubscription {
                    filter: "users/1/#".into(),
                    options: 0b10_1001,
                    identifier: Some(268_435_455),
                },
                StoredSubscription {
                    filter: "groups/+/msg".into(),
                    options: 1,
                    identifier: None,
                },
            ],
        }
    }

    #[test]
    fn message_round_trip() {
        for expires in [None, Some(0), Some(u64::MAX)] {
            let m = message(expires);
            let encoded = encode_message(&m).unwrap();
            assert_eq!(decode_message(Bytes::from(encoded)).unwrap(), m);
        }
    }

    #[test]
    fn queued_round_trip_and_state_patch() {
        let q = QueuedMessage {
            message: message(Some(5)),
            state: QueueState::Pending,
            message_ref: None,
        };
        let mut encoded = encode_queued(&q).unwrap();
        set_queued_state(&mut encoded, QueueState::Released).unwrap();
        let decoded = decode_queued(Bytes::from(encoded)).unwrap();
        assert_eq!(decoded.state, QueueState::Released);
        assert_eq!(decoded.message, q.message);
        assert_eq!(decoded.message_ref, None);
    }

    #[test]
    fn referenced_queue_entry_stores_no_payload() {
        let q = QueuedMessage {
            message: message(None),
            state: QueueState::Released,
            message_ref: Some(u64::MAX - 1),
        };
        let encoded = encode_queued(&q).unwrap();
        let inline = encode_queued(&QueuedMessage {
            message_ref: None,
            ..q.clone()
        })
        .unwrap();
        // The id (8 bytes) replaces the payload.
        assert_eq!(encoded.len() + q.message.payload.len(), inline.len() + 8);
        let decoded = decode_queued(Bytes::from(encoded)).unwrap();
        assert_eq!(decoded.message_ref, Some(u64::MAX - 1));
        assert_eq!(decoded.state, QueueState::Released);
        assert_eq!(
            decoded.message,
            StoredMessage {
                payload: Bytes::new(),
                ..q.message
            }
        );
    }

    /// A queue record as written before message references (record version 1).
    fn v1_queued(state: u8, message: &StoredMessage) -> Vec<u8> {
        let retained = encode_message(message).unwrap();
        let mut v1 = vec![QUEUE_RECORD_V1, state];
        v1.extend_from_slice(&retained[1..]);
        v1
    }

    #[test]
    fn version_1_queue_record_still_decodes() {
        let m = message(Some(9));
        let mut v1 = v1_queued(STATE_RELEASED, &m);
        let expected = QueuedMessage {
            message: m,
            state: QueueState::Released,
            message_ref: None,
        };
        assert_eq!(decode_queued(Bytes::from(v1.clone())).unwrap(), expected);
        // A state change rewrites it in place, still as version 1.
        set_queued_state(&mut v1, QueueState::Pending).unwrap();
        assert_eq!(v1[0], QUEUE_RECORD_V1);
        let decoded = decode_queued(Bytes::from(v1)).unwrap();
        assert_eq!(decoded.state, QueueState::Pending);
        assert_eq!(decoded.message, expected.message);
    }

    fn user() -> StoredUser {
        StoredUser {
            user: "alice".into(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            operator: true,
            created_at_ms: 1_700_000_000_123,
        }
    }

    fn group() -> StoredGroup {
        StoredGroup {
            gid: "g-42".into(),
            members: vec!["".into(), "alice".into(), "bob".into()],
            created_at_ms: 17,
        }
    }

    #[test]
    fn user_group_inbox_round_trip() {
        let u = user();
        let encoded = encode_user(&u).unwrap();
        assert_eq!(
            decode_user("alice".into(), Bytes::from(encoded)).unwrap(),
            u
        );
        let plain = StoredUser {
            operator: false,
            password_hash: String::new(),
            ..u
        };
        let encoded = encode_user(&plain).unwrap();
        assert_eq!(
            decode_user("alice".into(), Bytes::from(encoded)).unwrap(),
            plain
        );

        let g = group();
        let encoded = encode_group(&g).unwrap();
        assert_eq!(
            decode_group("g-42".into(), Bytes::from(encoded)).unwrap(),
            g
        );
        let empty = StoredGroup {
            members: vec![],
            ..g
        };
        let encoded = encode_group(&empty).unwrap();
        assert_eq!(
            decode_group("g-42".into(), Bytes::from(encoded)).unwrap(),
            empty
        );

        for entry in [
            InboxEntry {
                message_id: 0,
                role: 0,
            },
            InboxEntry {
                message_id: u64::MAX,
                role: 255,
            },
        ] {
            assert_eq!(decode_inbox(&encode_inbox(&entry)).unwrap(), entry);
        }
    }

    #[test]
    fn session_round_trip() {
        let s = session();
        let encoded = encode_session(&s).unwrap();
        assert_eq!(
            decode_session("phone-1".into(), Bytes::from(encoded)).unwrap(),
            s
        );
        let empty = StoredSession {
            subscriptions: vec![],
            disconnected_at_ms: None,
            user: String::new(),
            ..s
        };
        let encoded = encode_session(&empty).unwrap();
        // A record without the user flag is what earlier builds wrote: it still decodes.
        assert_eq!(encoded[6], 0, "no flags");
        assert_eq!(
            decode_session("phone-1".into(), Bytes::from(encoded)).unwrap(),
            empty
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        for message_ref in [None, Some(3)] {
            let encoded = encode_queued(&QueuedMessage {
                message: message(Some(1)),
                state: QueueState::Released,
                message_ref,
            })
            .unwrap();
            for len in 0..encoded.len() {
                assert!(decode_queued(Bytes::copy_from_slice(&encoded[..len])).is_err());
            }
        }
        let v1 = v1_queued(STATE_PENDING, &message(None));
        for len in 0..v1.len() {
            assert!(decode_queued(Bytes::copy_from_slice(&v1[..len])).is_err());
        }
        let encoded = encode_user(&user()).unwrap();
        for len in 0..encoded.len() {
            assert!(decode_user(String::new(), Bytes::copy_from_slice(&encoded[..len])).is_err());
        }
        let encoded = encode_group(&group()).unwrap();
        for len in 0..encoded.len() {
            assert!(decode_group(String::new(), Bytes::copy_from_slice(&encoded[..len])).is_err());
        }
        let encoded = encode_inbox(&InboxEntry {
            message_id: 5,
            role: 1,
        });
        for len in 0..encoded.len() {
            assert!(decode_inbox(&encoded[..len]).is_err());
        }
        let encoded = encode_session(&session()).unwrap();
        for len in 0..encoded.len() {
            assert!(
                decode_session(String::new(), Bytes::copy_from_slice(&encoded[..len])).is_err()
            );
        }
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode_message(Bytes::from_static(&[9, 0, 0])).is_err());
        assert!(decode_message(Bytes::from_static(&[])).is_err());
        let mut trailing = encode_message(&message(None)).unwrap();
        trailing.push(0);
        assert!(decode_message(Bytes::from(trailing)).is_err());
        // A huge subscription count must not allocate.
        let bogus = [RECORD_VERSION, 5, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF];
        assert!(decode_session(String::new(), Bytes::copy_from_slice(&bogus)).is_err());
        let mut state = vec![RECORD_VERSION, 7, 0];
        assert!(set_queued_state(&mut state, QueueState::Pending).is_err());
        assert!(set_queued_state(&mut [], QueueState::Pending).is_err());
        assert!(decode_u64(&[1, 2, 3]).is_err());
        assert!(set_queued_state(&mut [QUEUE_RECORD_VERSION], QueueState::Pending).is_err());
        let err = decode_queued(Bytes::from_static(&[3, 0])).unwrap_err();
        assert!(err.0.contains("version 3"), "{err}");
        // A referenced entry that carries a payload anyway was not written by this code.
        let mut referenced = vec![QUEUE_RECORD_VERSION, STATE_PENDING, FLAG_REFERENCED];
        referenced.extend_from_slice(&7u64.to_be_bytes());
        referenced.extend_from_slice(&encode_message(&message(None)).unwrap()[1..]);
        assert!(decode_queued(Bytes::from(referenced)).is_err());
        let mut flags = vec![QUEUE_RECORD_VERSION, STATE_PENDING, 4];
        flags.extend_from_slice(&encode_message(&message(None)).unwrap()[1..]);
        assert!(decode_queued(Bytes::from(flags)).is_err());
        // A huge member count must not allocate.
        let bogus = [
            RECORD_VERSION,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
        ];
        assert!(decode_group(String::new(), Bytes::copy_from_slice(&bogus)).is_err());
        let mut user_flags = encode_user(&user()).unwrap();
        user_flags[1] = 2;
        assert!(decode_user(String::new(), Bytes::from(user_flags)).is_err());
        assert!(decode_inbox(&[2, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode_inbox(&[RECORD_VERSION; 11]).is_err());
    }

    #[test]
    fn payload_is_a_slice_of_the_value() {
        let value = Bytes::from(encode_message(&message(None)).unwrap());
        let decoded = decode_message(value.clone()).unwrap();
        let range = value.as_ptr_range();
        assert!(range.contains(&decoded.payload.as_ptr()));
    }

    #[test]
    fn oversized_fields_are_invalid() {
        let mut m = message(None);
        m.topic = "t".repeat(70_000);
        assert!(matches!(
            encode_message(&m),
            Err(StorageError::Invalid { .. })
        ));
        m.topic = "t".into();
        m.qos = 3;
        assert!(matches!(
            check_message(&m),
            Err(StorageError::Invalid { .. })
        ));
        let mut u = user();
        u.password_hash = "h".repeat(70_000);
        assert!(matches!(check_user(&u), Err(StorageError::Invalid { .. })));
        assert!(matches!(encode_user(&u), Err(StorageError::Invalid { .. })));
        let mut g = group();
        g.members.push("m".repeat(70_000));
        assert!(matches!(check_group(&g), Err(StorageError::Invalid { .. })));
        assert!(matches!(
            encode_group(&g),
            Err(StorageError::Invalid { .. })
        ));
    }
}
