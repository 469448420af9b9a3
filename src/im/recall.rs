//! Recall: a sender takes back one of its chat messages within `im.recall_window_secs`.
//!
//! The message is stored once, so recalling it is one rewrite: the stored message loses its
//! payload and gains `recalled = true`, and every copy read from storage afterwards (offline
//! queues, `$sync` replays) comes out that way. Devices that already have it learn of the
//! recall from a *recall entry*: a chat message of the same conversation whose payload is
//! the recalled id, numbered into every recipient's inbox like any message (so a device
//! away hears it in its sync) and delivered on `inbox/{r}/recall/...`.

use bytes::Bytes;
use tern_codec::QoS;

use super::ids::time_of;
use super::inbox::{stamp, user_property, FROM, RECALLED};
use super::topics::Conversation;
use crate::protocol::Message;

/// Why a recall is not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecallRefused {
    #[error("message {0} is not the recaller's: only its sender may recall it")]
    NotSender(u64),
    #[error("message {id} was sent {age_secs} s ago, past im.recall_window_secs ({window_secs})")]
    TooLate {
        id: u64,
        age_secs: u64,
        window_secs: u64,
    },
    #[error("message {0} is not a direct or group message")]
    NotChat(u64),
}

/// What a valid recall request leads to.
#[derive(Debug, PartialEq)]
pub enum Recall {
    /// Recalled before: nothing more to do.
    Done,
    /// Store `recalled` under the id, and number `entry` into the recipients' inboxes.
    Carry {
        recalled: Box<Message>,
        entry: Box<Message>,
    },
}

/// Decides on `user`'s recall of `stored` (stored under `id`) at `now_ms`.
pub fn decide(
    stored: Message,
    id: u64,
    user: &str,
    now_ms: u64,
    window_secs: u64,
) -> Result<Recall, RecallRefused> {
    if Conversation::parse(&stored.topic).is_none() {
        return Err(RecallRefused::NotChat(id));
    }
    if user_property(&stored, FROM) != Some(user) {
        return Err(RecallRefused::NotSender(id));
    }
    if user_property(&stored, RECALLED).is_some() {
        return Ok(Recall::Done);
    }
    let age_ms = now_ms.saturating_sub(time_of(id));
    if age_ms > window_secs.saturating_mul(1000) {
        return Err(RecallRefused::TooLate {
            id,
            age_secs: age_ms / 1000,
            window_secs,
        });
    }
    let entry = Message::new(
        stored.topic.clone(),
        QoS::AtLeastOnce,
        Bytes::from(id.to_string()),
    );
    let mut recalled = stored;
    recalled.payload = Bytes::new();
    stamp(&mut recalled, RECALLED, "true".into());
    Ok(Recall::Carry {
        recalled: Box::new(recalled),
        entry: Box::new(entry),
    })
}

#[cfg(test)]
mod tests {
    use tern_codec::ByteString;

    use super::*;
    use crate::im::ids::cutoff;
    use crate::im::inbox::stamp_sender;

    fn sent(topic: &str, from: &str) -> Message {
        let mut message = Message::new(
            ByteString::from(topic),
            QoS::AtLeastOnce,
            Bytes::from_static(b"oops"),
        );
        stamp_sender(&mut message, from);
        message
    }

    #[test]
    fn only_the_sender_within_the_window() {
        let id = cutoff(1_000_000);
        let now = 1_000_000 + 119_000;
        let Ok(Recall::Carry { recalled, entry }) =
            decide(sent("dm/bob", "alice"), id, "alice", now, 120)
        else {
            panic!("a recall in time is carried out");
        };
        assert!(recalled.payload.is_empty());
        assert_eq!(user_property(&recalled, RECALLED), Some("true"));
        assert_eq!(user_property(&recalled, FROM), Some("alice"));
        assert_eq!(&*entry.topic, "dm/bob");
        assert_eq!(entry.payload, id.to_string());

        assert_eq!(
            decide(sent("dm/bob", "alice"), id, "bob", now, 120),
            Err(RecallRefused::NotSender(id))
        );
        assert!(matches!(
            decide(sent("dm/bob", "alice"), id, "alice", now + 2_000, 120),
            Err(RecallRefused::TooLate { age_secs: 121, .. })
        ));
        assert_eq!(
            decide(sent("news/x", "alice"), id, "alice", now, 120),
            Err(RecallRefused::NotChat(id))
        );
        assert_eq!(decide(*recalled, id, "alice", now, 120), Ok(Recall::Done));
    }
}
