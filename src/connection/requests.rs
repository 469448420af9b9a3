//! A device's chat requests (docs/chat.md): `$read/...` (a read position), `$recall`,
//! `$receipts/group/{gid}` and `$settings`. Each reads what it needs from storage off
//! the runtime's threads, decides with the pure parts in `im::reads` / `im::recall`, and
//! is answered with its acknowledgement's reason: 0x00 done (once durable), 0x99 a payload
//! that does not parse, 0x87 not allowed, 0x80 a seq or id the broker does not have.
//! Not on cluster nodes yet (0x83): their inboxes live in the cluster, without ids.

use std::sync::Arc;

use tern_codec::{ByteString, QoS, ReasonCode};
use tern_storage::{Durable, Mark, Op};

use super::outbound::{read_store, read_store_now};
use super::{Connection, ConnectionError};
use crate::im::reads::{group_reads, in_conversation, parse_number, GroupReadsError, Settings};
use crate::im::recall::{decide, Recall};
use crate::im::topics::{classify, group_receipts_topic, Address, Conversation};
use crate::protocol::{now_ms, Delivery, Message};
use crate::router::{ReadReport, Routed};

/// A request's answer: refused now with a reason, or done once `Durable` resolves.
pub(super) enum Answer {
    Now(ReasonCode),
    Once(Routed, Durable),
}

impl Answer {
    fn done() -> Answer {
        Answer::Now(ReasonCode::Success)
    }
}

impl Connection {
    /// Carries out a chat request published on `request.topic`.
    pub(super) async fn request(&mut self, request: &Message) -> Result<Answer, ConnectionError> {
        if self.ctx.inbox.is_some() {
            tracing::info!(client_id = %self.client_id, topic = %request.topic,
                "chat request refused: not served on cluster nodes yet");
            return Ok(Answer::Now(ReasonCode::ImplementationSpecificError));
        }
        let payload = &request.payload;
        match classify(&request.topic) {
            Address::Read(conversation) => {
                let conversation = owned(&conversation);
                self.read(conversation, payload).await
            }
            Address::Recall => self.recall(payload).await,
            Address::GroupReceipts { gid } => {
                let gid = gid.to_string();
                self.group_receipts(gid, payload).await
            }
            Address::Settings => self.settings(payload).await,
            _ => Ok(Answer::Now(ReasonCode::TopicNameInvalid)),
        }
    }

    fn bad_request(&self, what: &str, e: &str) -> Answer {
        tracing::info!(client_id = %self.client_id, user = %self.user, "{what} refused: {e}");
        Answer::Now(ReasonCode::PayloadFormatInvalid)
    }

    /// `$read/dm/{peer}` or `$read/group/{gid}` with a seq of the user's inbox.
    async fn read(
        &mut self,
        conversation: OwnedConversation,
        payload: &[u8],
    ) -> Result<Answer, ConnectionError> {
        let seq = match parse_number(payload, "seq") {
            Ok(seq) => seq,
            Err(e) => return Ok(self.bad_request("read position", &e)),
        };
        let user = self.user.to_string();
        let name = conversation.borrowed().read_mark();
        // Only a DM's peer may get a receipt: only then are the reader's settings read.
        let peer = match &conversation {
            OwnedConversation::Direct(peer) if *peer != user => Some(peer.clone()),
            _ => None,
        };
        let dm = peer.is_some();
        let lookup = |user: String, name: String| {
            move |store: &dyn tern_storage::Store| {
                let entry = store
                    .inbox(&user, seq, 1)?
                    .into_iter()
                    .next()
                    .filter(|(at, _, _)| *at == seq);
                let receipts = dm && Settings::load(store, &user)?.receipts;
                Ok((entry, store.mark(&user, &name)?, receipts))
            }
        };
        // The device read an entry it was sent, which is applied by then in all but a
        // race with the writer: wait for the writes queued so far only when it is missing.
        let mut found = read_store_now(&self.ctx, lookup(user.clone(), name.clone())).await?;
        if found.0.is_none() {
            found = read_store(&self.ctx, lookup(user.clone(), name.clone())).await?;
        }
        let (entry, current, receipts) = found;
        let Some((_, entry, Some(stored))) = entry else {
            tracing::info!(client_id = %self.client_id, %user, seq,
                "read position refused: no such entry in the user's inbox (trimmed, or not yet)");
            return Ok(Answer::Now(ReasonCode::UnspecifiedError));
        };
        let message = Message::from_stored(stored).ok();
        if !message.is_some_and(|m| in_conversation(&m, &user, &conversation.borrowed())) {
            tracing::info!(client_id = %self.client_id, %user, seq, mark = %name,
                "read position refused: the entry is not a message of that conversation");
            return Ok(Answer::Now(ReasonCode::NotAuthorized));
        }
        let id = entry.message_id;
        if current.is_some_and(|mark| mark.id >= id) {
            // Read that far already: nothing moves, nobody is told.
            return Ok(Answer::done());
        }
        let receipt_to = peer.filter(|_| receipts);
        let report = ReadReport {
            reader: user,
            name,
            mark: Mark {
                id,
                seq,
                at_ms: now_ms(),
            },
            receipt_to,
        };
        let durable = self.ctx.router.read_mark(report).await?;
        Ok(Answer::Once(
            Routed {
                matched: true,
                refused: None,
            },
            durable,
        ))
    }

    /// `$recall` with the id of one of the user's messages.
    async fn recall(&mut self, payload: &[u8]) -> Result<Answer, ConnectionError> {
        let id = match parse_number(payload, "message id") {
            Ok(id) => id,
            Err(e) => return Ok(self.bad_request("recall", &e)),
        };
        let stored = read_store(&self.ctx, move |store| store.message(id)).await?;
        let Some(message) = stored.and_then(|stored| Message::from_stored(stored).ok()) else {
            tracing::info!(client_id = %self.client_id, user = %self.user, id,
                "recall refused: no such message (never sent, or deleted by retention)");
            return Ok(Answer::Now(ReasonCode::UnspecifiedError));
        };
        let window = self.ctx.limits.recall_window_secs;
        match decide(message, id, &self.user, now_ms(), window) {
            Ok(Recall::Done) => Ok(Answer::done()),
            Ok(Recall::Carry { recalled, entry }) => {
                let (routed, durable) = self
                    .ctx
                    .router
                    .recall(&self.user, id, *recalled, *entry)
                    .await?;
                Ok(Answer::Once(routed, durable))
            }
            Err(refused) => {
                tracing::info!(client_id = %self.client_id, user = %self.user, "recall refused: {refused}");
                Ok(Answer::Now(ReasonCode::NotAuthorized))
            }
        }
    }

    /// `$receipts/group/{gid}` with the id of the user's message: answered on
    /// `inbox/{user}/receipts/group/{gid}` to this connection.
    async fn group_receipts(
        &mut self,
        gid: String,
        payload: &[u8],
    ) -> Result<Answer, ConnectionError> {
        let id = match parse_number(payload, "message id") {
            Ok(id) => id,
            Err(e) => return Ok(self.bad_request("group receipts", &e)),
        };
        let user = self.user.to_string();
        let reads = {
            let (gid, user) = (gid.clone(), user.clone());
            read_store(&self.ctx, move |store| {
                Ok(group_reads(store, &gid, id, Some(&user)))
            })
            .await?
        };
        let reads = match reads {
            Ok(reads) => reads,
            Err(GroupReadsError::Storage(e)) => return Err(e.into()),
            Err(e) => {
                tracing::info!(client_id = %self.client_id, %user, "group receipts refused: {e}");
                return Ok(Answer::Now(match e {
                    GroupReadsError::NoMessage(_) => ReasonCode::UnspecifiedError,
                    _ => ReasonCode::NotAuthorized,
                }));
            }
        };
        let answer = Message::new(
            ByteString::from(group_receipts_topic(&user, &gid)),
            QoS::AtLeastOnce,
            bytes::Bytes::from(reads.to_json()),
        );
        let delivery = Delivery::new(Arc::new(answer), QoS::AtLeastOnce);
        if self.session.deliver(delivery, now_ms()).is_err() {
            tracing::debug!(client_id = %self.client_id, "group receipts not sent: the session's queue is full");
        }
        Ok(Answer::done())
    }

    /// `$settings` with a JSON object of the settings to change.
    async fn settings(&mut self, payload: &[u8]) -> Result<Answer, ConnectionError> {
        let user = self.user.to_string();
        let mut settings = {
            let user = user.clone();
            read_store(&self.ctx, move |store| Settings::load(store, &user)).await?
        };
        if let Err(e) = settings.apply(payload) {
            return Ok(self.bad_request("settings", &e));
        }
        let durable = self
            .ctx
            .writer
            .submit(vec![Op::PutUserValue {
                user,
                name: crate::im::reads::SETTINGS.to_string(),
                value: settings.encode(),
            }])
            .await;
        Ok(Answer::Once(
            Routed {
                matched: true,
                refused: None,
            },
            durable,
        ))
    }
}

/// A conversation named by a request, owned (it outlives the request's topic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum OwnedConversation {
    Direct(String),
    Group(String),
}

impl OwnedConversation {
    fn borrowed(&self) -> Conversation<'_> {
        match self {
            OwnedConversation::Direct(peer) => Conversation::Direct { to: peer },
            OwnedConversation::Group(gid) => Conversation::Group { gid },
        }
    }
}

fn owned(conversation: &Conversation<'_>) -> OwnedConversation {
    match conversation {
        Conversation::Direct { to } => OwnedConversation::Direct(to.to_string()),
        Conversation::Group { gid } => OwnedConversation::Group(gid.to_string()),
    }
}
