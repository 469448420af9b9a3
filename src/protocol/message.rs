//! The application message as the broker routes it, apart from any one connection.
//!
//! A PUBLISH from a client becomes one [`Message`], shared (`Arc`) by every subscriber it is
//! delivered to; each subscriber gets a [`Delivery`] that adds what differs per subscriber
//! (granted QoS, retain flag, subscription identifiers, its position in a durable queue).
//! Expiry is kept as an absolute deadline so that the remaining lifetime can be sent and an
//! expired message is never delivered, wherever it waited.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tern_codec::{ByteString, Properties, PropertyFields, Publish, QoS};

/// How many messages ahead of the one being encoded a loop over cold messages prefetches
/// the topic and payload (and twice as far, the message itself): far enough for a load
/// from memory (~100 ns) to complete meanwhile, near enough to stay in cache.
pub(crate) const PREFETCH_DISTANCE: usize = 4;

/// A hint to the CPU to load the cache line at `p`; nothing elsewhere than on x86-64.
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and changes nothing but the cache, whatever the
    // address; `p` comes from a live reference anyway.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Which session a message came from, for v5's No Local option.
pub(crate) type SessionId = u64;

/// One application message, immutable once routed.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// The properties forwarded to subscribers: payload format, content type, response topic,
    /// correlation data and user properties. Never alias, expiry or subscription identifiers:
    /// those are per hop and are rebuilt on delivery.
    pub properties: Properties,
    /// Unix milliseconds after which the message must not be delivered.
    pub expires_at_ms: Option<u64>,
    /// The publishing session, when it came from a client (not from storage).
    pub origin: Option<SessionId>,
    /// When its PUBLISH was read, for the publish-to-deliver latency (`None`: not from a
    /// client's PUBLISH, or read back from storage).
    pub received_at: Option<std::time::Instant>,
    /// Its sequence in the cluster's stream of QoS > 0 messages, when it came from
    /// another node through it (see `cluster/messages.rs`).
    pub cluster_seq: Option<u64>,
}

impl Message {
    /// Starts loading this message into the cache, ahead of its use: see
    /// [`Message::prefetch_contents`].
    pub fn prefetch(self: &Arc<Message>) {
        prefetch(Arc::as_ptr(self).cast());
    }

    /// Starts loading the topic and payload into the cache (reading the message itself,
    /// which [`Message::prefetch`] should have loaded a little earlier). For loops over
    /// many messages that are not in cache, such as the retained messages a subscription
    /// matches in a large store: a few messages ahead, so that their misses overlap.
    pub fn prefetch_contents(&self) {
        prefetch(self.topic.as_ptr());
        prefetch(self.payload.as_ptr());
    }

    /// Builds the routed message from a client's PUBLISH (topic already alias-resolved).
    pub fn from_publish(publish: &Publish, topic: ByteString, origin: SessionId) -> Message {
        let p = &publish.properties;
        let properties = if p.is_empty() {
            Properties::default()
        } else {
            PropertyFields {
                payload_format_indicator: p.payload_format_indicator,
                content_type: p.content_type.clone(),
                response_topic: p.response_topic.clone(),
                correlation_data: p.correlation_data.clone(),
                user_properties: p.user_properties.clone(),
                ..PropertyFields::default()
            }
            .into()
        };
        Message {
            topic,
            payload: publish.payload.clone(),
            qos: publish.qos,
            retain: publish.retain,
            properties,
            expires_at_ms: p
                .message_expiry_interval
                .map(|secs| now_ms().saturating_add(u64::from(secs) * 1000)),
            origin: Some(origin),
            received_at: Some(std::time::Instant::now()),
            cluster_seq: None,
        }
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }

    /// Whole seconds left to live, rounded up, for the Message Expiry Interval sent onwards.
    pub fn remaining_secs(&self, now_ms: u64) -> Option<u32> {
        self.expires_at_ms.map(|at| {
            let left = at.saturating_sub(now_ms).div_ceil(1000);
            u32::try_from(left).unwrap_or(u32::MAX)
        })
    }

    /// Bytes a queued copy accounts for against a session's queue limit.
    pub fn cost(&self) -> usize {
        self.topic.len() + self.payload.len() + 64
    }
}

/// A message on its way to one subscriber.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// min(published QoS, granted QoS).
    pub qos: QoS,
    /// The RETAIN flag as sent: set for retained messages sent on subscribe, and on live
    /// messages only with v5's Retain As Published.
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// Position in the session's durable queue, for persistent sessions and QoS > 0.
    pub seq: Option<u64>,
    /// Sent before (redelivery after reconnect): the DUP flag is set.
    pub dup: bool,
    /// A QoS 2 message whose PUBREC was received before a restart: only PUBREL is resent.
    pub released: bool,
}

impl Message {
    /// A message the broker makes itself: not retained, no properties, no expiry, from no
    /// session.
    pub(crate) fn new(topic: ByteString, qos: QoS, payload: Bytes) -> Message {
        Message {
            topic,
            payload,
            qos,
            retain: false,
            properties: Properties::default(),
            expires_at_ms: None,
            origin: None,
            received_at: None,
            cluster_seq: None,
        }
    }
}

#[cfg(test)]
impl Message {
    /// A message for tests (see [`Message::new`]).
    pub(crate) fn test(topic: &str, qos: QoS, payload: impl Into<Bytes>) -> Message {
        Message::new(ByteString::from(topic), qos, payload.into())
    }
}

impl Delivery {
    /// `message` at `qos`, as it was published: not retained, with no subscription
    /// identifier and no place in a durable queue.
    pub fn new(message: Arc<Message>, qos: QoS) -> Delivery {
        Delivery {
            message,
            qos,
            retain: false,
            subscription_ids: Vec::new(),
            seq: None,
            dup: false,
            released: false,
        }
    }
}

/// Unix time in milliseconds (0 before 1970, which no clock here reads).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
