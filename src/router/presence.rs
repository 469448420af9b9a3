//! Presence and contacts, as the router sees them: a user's first connected device and
//! its last one leaving go to [`crate::im::presence::Presence`], which says when to publish;
//! the state is published as a retained message on `presence/{user}`. Single nodes only:
//! a cluster node cannot tell whether the user has a device on another node.
//!
//! Contacts (who may watch whose presence, `im.presence_visible_to = "contacts"`): a DM
//! records the pair durably (user values `contact/{other}`), once per pair while the pair
//! is remembered in memory.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::Arc;

use bytes::Bytes;
use tern_codec::{ByteString, QoS};
use tern_storage::Op;
use tokio::time::Instant;

use super::core::{Outcome, Router};
use super::timers::TimerKind;
use crate::config::PresenceVisibility;
use crate::im::presence::{payload, Came, Left, Presence};
use crate::im::topics::presence_topic;
use crate::protocol::{now_ms, Message};

/// A user's presence as the admin API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PresenceState {
    /// Devices connected now.
    pub devices: usize,
    /// The retained presence payload (JSON), if one was ever published.
    pub published: Option<Bytes>,
}

/// The user value recording that the user exchanged a DM with `other`.
pub(crate) fn contact_name(other: &str) -> String {
    format!("contact/{other}")
}

impl Router {
    /// Whether presence is published here (not on cluster nodes).
    fn presence(&mut self) -> Option<&mut Presence> {
        self.presence.as_mut()
    }

    /// `user`'s first device connected.
    pub(super) fn presence_came(&mut self, user: &str, out: &mut Outcome) {
        let Some(presence) = self.presence() else {
            return;
        };
        match presence.came(user) {
            Came::Online => self.publish_presence(user, true, out),
            Came::Stayed(ticket, at) => {
                self.timers.remove(&(at, ticket, TimerKind::Presence));
            }
        }
    }

    /// `user`'s last device left.
    pub(super) fn presence_left(&mut self, user: &str, now: Instant, out: &mut Outcome) {
        let Some(presence) = self.presence() else {
            return;
        };
        match presence.left(user, now) {
            Left::Offline => self.publish_presence(user, false, out),
            Left::Later(ticket, at) => {
                self.timers.insert((at, ticket, TimerKind::Presence));
                out.timers_changed = true;
            }
        }
    }

    /// A presence timer is due.
    pub(super) fn presence_due(&mut self, ticket: u64, out: &mut Outcome) {
        let Some(user) = self.presence().and_then(|p| p.due(ticket)) else {
            return;
        };
        if !self.user_online(&user) {
            self.publish_presence(&user, false, out);
        }
    }

    fn publish_presence(&mut self, user: &str, online: bool, out: &mut Outcome) {
        let mut message = Message::new(
            ByteString::from(presence_topic(user)),
            QoS::AtLeastOnce,
            Bytes::from(payload(online, now_ms())),
        );
        message.retain = true;
        self.route(&Arc::new(message), out);
    }

    /// The presence of each of `users`.
    pub(crate) fn presence_of(&self, users: &[String]) -> Vec<PresenceState> {
        users
            .iter()
            .map(|user| PresenceState {
                devices: self.connected_devices(user),
                published: self
                    .retained
                    .get(&presence_topic(user))
                    .map(|m| m.payload.clone()),
            })
            .collect()
    }

    /// Whether `a` and `b` are members of one group.
    pub(crate) fn share_a_group(&self, a: &str, b: &str) -> bool {
        self.groups.shared(a, b)
    }

    /// Records that `from` and `to` exchanged a DM, where presence is shown to contacts.
    pub(super) fn note_contacts(&mut self, from: &str, to: &str, out: &mut Outcome) {
        if self.limits.im.presence_visible_to != PresenceVisibility::Contacts || from == to {
            return;
        }
        // Remembered by a hash of the ordered pair, so that the common case (a pair seen
        // before) allocates nothing. Two pairs sharing a hash (one chance in 2^64 per pair)
        // would leave the second unrecorded: its users could not watch each other's
        // presence until one of them was forgotten.
        let (a, b) = if from < to { (from, to) } else { (to, from) };
        let pair = rustc_hash::FxBuildHasher.hash_one((a, b));
        if self.contacts.contains(&pair) {
            return;
        }
        if self.contacts.len() >= self.limits.im.contacts_cached {
            self.contacts = HashSet::default();
        }
        for (user, other) in [(a, b), (b, a)] {
            out.ops.push(Op::PutUserValue {
                user: user.to_string(),
                name: contact_name(other),
                value: Bytes::new(),
            });
        }
        self.contacts.insert(pair);
    }
}
