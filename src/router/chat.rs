//! Chat routing: a direct or group message becomes one stored message, one inbox entry per
//! recipient user, and deliveries to each recipient's devices, all in one atomic batch.
//!
//! Order per conversation follows from the router having one owner at a time: messages
//! are numbered and queued in the order they are routed, and each recipient's `seq`
//! increases with that order. The payload is written once (`Op::PutMessage`); a recipient costs an inbox
//! entry (a few bytes) and, for each of its offline persistent sessions, a queue entry that
//! refers to the stored payload instead of copying it.

use std::sync::Arc;

use arcstr::ArcStr;
use tern_codec::ReasonCode;
use tern_storage::{InboxEntry, Op};

use super::core::{Outcome, Router};
use super::routing::{Payload, Routed};
use crate::im::directory::{ChangeError, GroupChange};
use crate::im::ids::cutoff;
use crate::im::inbox::{for_recipient, stamp, stamp_sender, user_property, MSGID, RECALL};
use crate::im::topics::{Conversation, ROLE_RECEIVED, ROLE_SENT};
use crate::metrics::{DropReason, PublishRefusal};
use crate::protocol::{now_ms, Message};

/// Inbox logs are trimmed to `im.inbox_max_messages` every this many appends per user, so
/// a log holds at most that many entries plus this slack.
pub(super) const TRIM_EVERY: u64 = 64;

/// A chat message ready to be numbered into its recipients' inboxes.
pub(crate) struct ChatPlan {
    /// As published, stamped with its sender (`from`).
    pub(crate) message: Message,
    /// Each recipient user with its role (`ROLE_RECEIVED` / `ROLE_SENT`).
    pub(crate) recipients: Vec<(String, u8)>,
    /// The client's own message id, if it gave one.
    pub(crate) msgid: Option<String>,
}

impl Router {
    /// A direct or group message from the authenticated user `from` (topic `dm/{to}` or
    /// `group/{gid}`): stored once, numbered into every recipient's inbox, delivered.
    pub(crate) fn chat(&mut self, from: &ArcStr, message: Message, out: &mut Outcome) -> Routed {
        let now = now_ms();
        match self.plan_chat(from, message, true) {
            Ok(plan) => self.number_chat(from, plan, now, out),
            Err(routed) => routed,
        }
    }

    /// A planned chat message: stored once, numbered into every recipient's inbox,
    /// delivered.
    fn number_chat(
        &mut self,
        from: &ArcStr,
        plan: ChatPlan,
        now: u64,
        out: &mut Outcome,
    ) -> Routed {
        let ChatPlan {
            message,
            recipients,
            ..
        } = plan;
        if let Some(Conversation::Direct { to }) = Conversation::parse(&message.topic) {
            self.note_contacts(from, to, out);
        }
        let id = self.message_ids.next(now);
        out.ops.push(Op::PutMessage {
            id,
            message: message.to_stored(),
        });
        let max_entries = self.limits.im.inbox_max_messages;
        for (user, role) in recipients {
            let seq = self.inbox_next.get(&user).copied().unwrap_or(0);
            let Some(copy) = for_recipient(&message, &user, role, seq, Some(id)) else {
                continue;
            };
            // Taken only once the entry is certain, so that a user's seqs never skip one.
            self.inbox_next.insert(user.clone(), seq + 1);
            if let Some(webhook) = &self.webhook {
                if role == ROLE_RECEIVED && !self.user_online(&user) {
                    webhook.offline_message(&user, seq, &copy, now);
                }
            }
            out.ops.push(Op::AppendInbox {
                user: user.clone(),
                seq,
                entry: InboxEntry {
                    message_id: id,
                    role,
                },
            });
            if seq % TRIM_EVERY == 0 && seq >= max_entries {
                out.ops.push(Op::TrimInbox {
                    user,
                    below_seq: seq + 1 - max_entries,
                });
            }
            self.deliver_to_subscribers(&Arc::new(copy), Payload::Stored(id), out);
        }
        // Stored in every recipient's inbox: delivered as far as the sender is concerned,
        // whether or not a device of theirs is subscribed right now.
        Routed::matched(true)
    }

    /// `from`'s recall of its message `id`: the stored message is replaced by `recalled`,
    /// and `entry` (a message of the same conversation, naming `id`) is numbered into the
    /// recipients' inboxes. Refused (like a message) when `from` may no longer write to
    /// the conversation, e.g. after leaving the group.
    pub(crate) fn recall(
        &mut self,
        from: &ArcStr,
        id: u64,
        recalled: Message,
        entry: Message,
        out: &mut Outcome,
    ) -> Routed {
        let mut plan = match self.plan_chat(from, entry, false) {
            Ok(plan) => plan,
            Err(routed) => return routed,
        };
        stamp(&mut plan.message, RECALL, id.to_string());
        out.ops.push(Op::PutMessage {
            id,
            message: recalled.to_stored(),
        });
        self.number_chat(from, plan, now_ms(), out)
    }

    /// Who a chat message goes to, and the message stamped with its sender; or the answer
    /// to the publisher when it goes nowhere (refused, or a repeat inside the duplicate
    /// window when `dedup`).
    pub(crate) fn plan_chat(
        &mut self,
        from: &ArcStr,
        mut message: Message,
        dedup: bool,
    ) -> Result<ChatPlan, Routed> {
        let Some(conversation) = Conversation::parse(&message.topic) else {
            self.metrics.publish_refused(PublishRefusal::TopicInvalid);
            return Err(Routed {
                matched: false,
                refused: Some(ReasonCode::TopicNameInvalid),
            });
        };
        let recipients: Vec<(String, u8)> = match conversation {
            Conversation::Direct { to } => {
                vec![
                    (to.to_string(), ROLE_RECEIVED),
                    (from.to_string(), ROLE_SENT),
                ]
            }
            Conversation::Group { gid } => match self.groups.members(gid) {
                Some(members) if members.contains(from.as_str()) => members
                    .iter()
                    .map(|member| (member.clone(), ROLE_RECEIVED))
                    .collect(),
                members => {
                    self.metrics.publish_refused(PublishRefusal::NotMember);
                    tracing::info!(%from, %gid, known = members.is_some(),
                        "group publish refused: sender is not a member");
                    return Err(Routed::REFUSED);
                }
            },
        };
        let msgid = user_property(&message, MSGID).map(str::to_string);
        if let (true, Some(msgid)) = (dedup, &msgid) {
            if self.dedup.check(from, msgid, now_ms()) {
                self.metrics.dropped(DropReason::Duplicate);
                tracing::debug!(%from, %msgid, "duplicate chat message dropped");
                return Err(Routed::matched(true));
            }
        }
        stamp_sender(&mut message, from);
        Ok(ChatPlan {
            message,
            recipients,
            msgid,
        })
    }

    /// An operator's change to a group.
    pub(crate) fn change_group(
        &mut self,
        change: &GroupChange,
        out: &mut Outcome,
    ) -> Result<(), ChangeError> {
        out.ops.push(self.groups.apply(change, now_ms())?);
        Ok(())
    }

    /// A group as the cluster's directory holds it now (`None`: deleted); the node that
    /// changed it checked the change.
    pub(crate) fn group_remote(
        &mut self,
        gid: &str,
        group: Option<tern_storage::StoredGroup>,
        out: &mut Outcome,
    ) {
        match group {
            Some(group) => {
                out.ops.push(Op::PutGroup(group.clone()));
                self.groups.put(group);
            }
            None => {
                self.groups.remove(gid);
                out.ops.push(Op::DeleteGroup {
                    gid: gid.to_string(),
                });
            }
        }
    }

    /// Retention by age: chat messages older than `im.inbox_max_age_secs` are deleted (one
    /// range deletion, ids being time-ordered).
    pub(super) fn sweep(&mut self, out: &mut Outcome) {
        let age_ms = self.limits.im.inbox_max_age_secs.saturating_mul(1000);
        let below_id = cutoff(now_ms().saturating_sub(age_ms));
        out.ops.push(Op::DeleteMessagesBefore { below_id });
    }
}
