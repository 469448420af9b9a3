//! Routed messages as the storage crate's records and back: a retained message, a chat
//! message stored once, and a persistent session's queued delivery. Apart from the
//! messages themselves (`protocol`), which know nothing of storage.

use std::sync::Arc;

use bytes::BytesMut;
use tern_codec::{ByteString, Properties, PropertyContext, QoS};
use tern_storage::{QueueState, QueuedMessage, StoredMessage};

use crate::protocol::{Delivery, Message};

impl Message {
    /// The message as stored: retained, or a chat message stored once.
    pub fn to_stored(&self) -> StoredMessage {
        let mut properties = BytesMut::new();
        // Only forwardable properties are kept, and they came from a decoded packet, so they
        // always encode; an empty block is the safe fallback if that ever changed.
        if self.properties.write_block(&mut properties).is_err() {
            properties.clear();
        }
        StoredMessage {
            topic: self.topic.to_string(),
            payload: self.payload.clone(),
            qos: self.qos.as_u8(),
            retain: self.retain,
            properties: properties.freeze(),
            expires_at_ms: self.expires_at_ms,
        }
    }

    /// Rebuilds a message read back from storage. Fails (with what is wrong) only if the
    /// stored record is damaged.
    pub fn from_stored(stored: StoredMessage) -> Result<Message, String> {
        let qos = QoS::from_u8(stored.qos).map_err(|e| format!("stored QoS: {e}"))?;
        let properties = if stored.properties.is_empty() {
            Properties::default()
        } else {
            Properties::read_block(&stored.properties, PropertyContext::Publish)
                .map_err(|e| format!("stored properties: {e}"))?
        };
        Ok(Message {
            topic: ByteString::from(stored.topic),
            payload: stored.payload,
            qos,
            retain: stored.retain,
            properties,
            expires_at_ms: stored.expires_at_ms,
            origin: None,
            received_at: None,
            cluster_seq: None,
        })
    }
}

impl Delivery {
    /// The delivery as a persistent session's queue entry.
    pub fn to_queued(&self) -> QueuedMessage {
        let mut message = self.message.to_stored();
        // Stored per subscriber: the granted QoS and retain flag are this delivery's.
        message.qos = self.qos.as_u8();
        message.retain = self.retain;
        QueuedMessage {
            message,
            message_ref: None,
            state: if self.released {
                QueueState::Released
            } else {
                QueueState::Pending
            },
        }
    }

    /// A queue entry read back (position `seq`); fails only on a damaged record.
    pub fn from_queued(seq: u64, queued: QueuedMessage) -> Result<Delivery, String> {
        let released = queued.state == QueueState::Released;
        let message = Message::from_stored(queued.message)?;
        Ok(Delivery {
            qos: message.qos,
            retain: message.retain,
            message: Arc::new(message),
            subscription_ids: Vec::new(),
            seq: Some(seq),
            // Whether it was sent before is known only to the session that sent it (see
            // `Attached::sent`); storage does not spend a write per delivery to record it.
            dup: false,
            released,
        })
    }
}
