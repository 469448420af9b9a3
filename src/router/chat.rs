//! Chat routing: a direct or group message becomes one stored message, one inbox entry per
//! recipient user, and deliveries to each recipient's devices, all in one atomic batch.
//!
//! Order per conversation follows from the router being one task: messages are numbered
//! and queued in the order their commands arrive, and each recipient's `seq` increases with
//! that order. The payload is written once (`Op::PutMessage`); a recipient costs an inbox
//! entry (a few bytes) and, for each of its offline persistent sessions, a queue entry that
//! refers to the stored payload instead of copying it.

use std::sync::Arc;

use arcstr::ArcStr;
use tern_codec::ReasonCode;
use tern_storage::{InboxEntry, Op};

use super::{inbound_qos2_op, Live, Routed, Router};
use crate::im::ids::cutoff;
use crate::im::inbox::{for_recipient, stamp_sender, user_property, MSGID};
use crate::im::topics::{Conversation, ROLE_RECEIVED, ROLE_SENT};
use crate::message::{now_ms, Message};
use crate::metrics::{DropReason, PublishRefusal};

/// Inbox logs are trimmed to `im.inbox_max_messages` every this many appends per user, so
/// a log holds at most that many entries plus this slack.
pub(super) const TRIM_EVERY: u64 = 64;

/// A chat publish from an authenticated user.
pub struct ChatPublish {
    /// The authenticated sender.
    pub from: ArcStr,
    /// The message as published (topic `dm/{to}` or `group/{gid}`).
    pub message: Message,
    /// As in `Command::Publish`: the inbound QoS 2 marker, written in the same batch.
    pub inbound_qos2: Option<(ArcStr, u16)>,
}

impl Router {
    pub(super) async fn chat(&mut self, chat: ChatPublish, wait: bool) -> Routed {
        let ChatPublish {
            from,
            mut message,
            inbound_qos2,
        } = chat;
        let now = now_ms();
        let Some(conversation) = Conversation::parse(&message.topic) else {
            self.metrics.publish_refused(PublishRefusal::TopicInvalid);
            return Routed::refused(ReasonCode::TopicNameInvalid);
        };
        let recipients: Vec<(String, u8)> = match conversation {
            Conversation::Direct { to } => {
                vec![
                    (to.to_string(), ROLE_RECEIVED),
                    (from.to_string(), ROLE_SENT),
                ]
            }
            Conversation::Group { gid } => match self.groups.members(gid) {
                Some(members) if members.contains(&*from) => members
                    .iter()
                    .map(|member| (member.clone(), ROLE_RECEIVED))
                    .collect(),
                members => {
                    self.metrics.publish_refused(PublishRefusal::NotMember);
                    tracing::info!(%from, %gid, known = members.is_some(),
                        "group publish refused: sender is not a member");
                    return Routed::refused(ReasonCode::NotAuthorized);
                }
            },
        };
        if let Some(msgid) = user_property(&message, MSGID) {
            if self.dedup.check(&from, msgid, now) {
                self.metrics.dropped(DropReason::Duplicate);
                tracing::debug!(%from, %msgid, "duplicate chat message dropped");
                return Routed {
                    matched: true,
                    durable: tern_storage::Durable::ready(),
                    refused: None,
                };
            }
        }
        stamp_sender(&mut message, &from);
        let mut ops = inbound_qos2_op(inbound_qos2);
        let id = self.message_ids.next(now);
        ops.push(Op::PutMessage {
            id,
            message: message.to_stored(),
        });
        let mut live = Vec::new();
        let max_entries = self.limits.im.inbox_max_messages;
        for (user, role) in recipients {
            let seq = self.inbox_next.get(&user).copied().unwrap_or(0);
            let Some(copy) = for_recipient(&message, &user, role, seq) else {
                continue;
            };
            // Taken only once the entry is certain, so that a user's seqs never skip one.
            self.inbox_next.insert(user.clone(), seq + 1);
            ops.push(Op::AppendInbox {
                user: user.clone(),
                seq,
                entry: InboxEntry {
                    message_id: id,
                    role,
                },
            });
            if seq % TRIM_EVERY == 0 && seq >= max_entries {
                ops.push(Op::TrimInbox {
                    user,
                    below_seq: seq + 1 - max_entries,
                });
            }
            self.plan(
                &Arc::new(copy),
                &mut ops,
                Some(id),
                &mut live,
                Live::HandOver,
            );
        }
        let durable = self.commit(ops, wait).await;
        self.send_all_live(live);
        // Stored in every recipient's inbox: delivered as far as the sender is concerned,
        // whether or not a device of theirs is subscribed right now.
        Routed {
            matched: true,
            durable,
            refused: None,
        }
    }

    /// Retention by age: chat messages older than `im.inbox_max_age_secs` are deleted (one
    /// range deletion, ids being time-ordered).
    pub(super) fn sweep(&mut self, ops: &mut Vec<Op>) {
        let age_ms = self.limits.im.inbox_max_age_secs.saturating_mul(1000);
        let below_id = cutoff(now_ms().saturating_sub(age_ms));
        ops.push(Op::DeleteMessagesBefore { below_id });
    }
}
