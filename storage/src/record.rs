//! Value encodings of [`RocksStore`](crate::RocksStore): compact hand-written binary records.
//!
//! Every record starts with a version byte so that the format can evolve without a migration
//! of old values; integers are big-endian, strings and byte fields length-prefixed:
//!
//! ```text
//! message record (retained): VERSION  body
//! queue record:              VERSION  state(u8: 0 pending, 1 released)  body
//! body:    qos(u8)  flags(u8: 1 retain, 2 has expiry)  [expires_at_ms(u64)]
//!          topic(u16 len + UTF-8)  properties(u32 len + bytes)  payload(u32 len + bytes)
//! session record: VERSION  protocol_level(u8)  expiry_interval_secs(u32)
//!          flags(u8: 1 has disconnected_at)  [disconnected_at_ms(u64)]
//!          count(u32)  count x { filter(u16 len + UTF-8)  options(u8)
//!                                flags(u8: 1 has identifier)  [identifier(u32)] }
//! ```
//!
//! The client id of a session and the seq of a queue entry live in the key only. Decoding
//! works on [`Bytes`], so payload and properties are slices of the value (no copy), and never
//! panics: a short, overlong or otherwise invalid value is a [`DecodeError`] that the store
//! turns into [`StorageError::Corrupt`] naming the key.

use bytes::{Buf, Bytes};

use crate::{
    QueueState, QueuedMessage, StorageError, StoredMessage, StoredSession, StoredSubscription,
};

/// Version byte written at the start of every record.
pub(crate) const RECORD_VERSION: u8 = 1;

const FLAG_RETAIN: u8 = 1;
const FLAG_EXPIRES: u8 = 2;
const FLAG_DISCONNECTED: u8 = 1;
const FLAG_IDENTIFIER: u8 = 1;

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

/// What [`encode_session`] would refuse.
pub(crate) fn check_session(session: &StoredSession) -> Result<(), StorageError> {
    len32("subscription list", session.subscriptions.len())?;
    for sub in &session.subscriptions {
        len16("subscription filter", sub.filter.len())?;
    }
    Ok(())
}

fn body_len(message: &StoredMessage) -> usize {
    2 + 8 + 2 + message.topic.len() + 4 + message.properties.len() + 4 + message.payload.len()
}

fn put_body(out: &mut Vec<u8>, message: &StoredMessage) -> Result<(), StorageError> {
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
    out.extend_from_slice(&len32("payload", message.payload.len())?.to_be_bytes());
    out.extend_from_slice(&message.payload);
    Ok(())
}

/// The record of a retained message.
pub(crate) fn encode_message(message: &StoredMessage) -> Result<Vec<u8>, StorageError> {
    let mut out = Vec::with_capacity(1 + body_len(message));
    out.push(RECORD_VERSION);
    put_body(&mut out, message)?;
    Ok(out)
}

/// The record of a queue entry.
pub(crate) fn encode_queued(queued: &QueuedMessage) -> Result<Vec<u8>, StorageError> {
    let mut out = Vec::with_capacity(2 + body_len(&queued.message));
    out.push(RECORD_VERSION);
    out.push(state_byte(queued.state));
    put_body(&mut out, &queued.message)?;
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
pub(crate) fn set_queued_state(value: &mut [u8], state: QueueState) -> DecodeResult<()> {
    match value {
        [RECORD_VERSION, old, ..] if *old == STATE_PENDING || *old == STATE_RELEASED => {
            *old = state_byte(state);
            Ok(())
        }
        [RECORD_VERSION, old, ..] => Err(DecodeError(format!("unknown queue state {old}"))),
        [version, ..] => Err(unknown_version(*version)),
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
    match session.disconnected_at_ms {
        Some(at) => {
            out.push(FLAG_DISCONNECTED);
            out.extend_from_slice(&at.to_be_bytes());
        }
        None => out.push(0),
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

/// A `u64` value (the queue high-water mark).
pub(crate) fn decode_u64(value: &[u8]) -> DecodeResult<u64> {
    <[u8; 8]>::try_from(value)
        .map(u64::from_be_bytes)
        .map_err(|_| DecodeError(format!("{} bytes where 8 were expected", value.len())))
}

fn unknown_version(version: u8) -> DecodeError {
    DecodeError(format!(
        "unknown record version {version} (this build reads {RECORD_VERSION})"
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
            other => Err(unknown_version(other)),
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

/// Decodes a queue record.
pub(crate) fn decode_queued(value: Bytes) -> DecodeResult<QueuedMessage> {
    let mut r = Reader::new(value);
    r.version()?;
    let state = match r.u8("queue state")? {
        STATE_PENDING => QueueState::Pending,
        STATE_RELEASED => QueueState::Released,
        other => return Err(DecodeError(format!("unknown queue state {other}"))),
    };
    let message = r.body()?;
    r.finish()?;
    Ok(QueuedMessage { message, state })
}

/// Decodes a session record; `client_id` comes from its key.
pub(crate) fn decode_session(client_id: String, value: Bytes) -> DecodeResult<StoredSession> {
    let mut r = Reader::new(value);
    r.version()?;
    let protocol_level = r.u8("protocol level")?;
    let expiry_interval_secs = r.u32("expiry interval")?;
    let disconnected_at_ms = match r.u8("session flags")? {
        0 => None,
        FLAG_DISCONNECTED => Some(r.u64("disconnection time")?),
        other => return Err(DecodeError(format!("unknown session flags {other:#04x}"))),
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
        };
        let mut encoded = encode_queued(&q).unwrap();
        set_queued_state(&mut encoded, QueueState::Released).unwrap();
        let decoded = decode_queued(Bytes::from(encoded)).unwrap();
        assert_eq!(decoded.state, QueueState::Released);
        assert_eq!(decoded.message, q.message);
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
            ..s
        };
        let encoded = encode_session(&empty).unwrap();
        assert_eq!(
            decode_session("phone-1".into(), Bytes::from(encoded)).unwrap(),
            empty
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let encoded = encode_queued(&QueuedMessage {
            message: message(Some(1)),
            state: QueueState::Released,
        })
        .unwrap();
        for len in 0..encoded.len() {
            assert!(decode_queued(Bytes::copy_from_slice(&encoded[..len])).is_err());
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
    }
}
