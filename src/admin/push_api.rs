//! `POST /v1/messages`: app servers push messages, as iQiyi's push gateway offers business
//! servers (docs/admin-api.md, "Pushing messages"):
//!
//! - to a user (`{"user": "bob"}`) or many (`{"users": [...]}`, the batch form): into each
//!   inbox with its next seq, from the system sender the app names (`from`), exactly as a
//!   DM from that sender (the `from` and `msgid` user properties devices see);
//! - to a group (`{"group": "g1"}`): as a group message from `from`, who must be a member;
//! - to a plain topic (`{"topic": "sensors/1"}`, `qos`, `retain`) or a broadcast channel
//!   (`{"broadcast": "news"}`).
//!
//! The answer comes once the message is stored (QoS > 0) and carries its `msgid`: the
//! request's `idempotency_key`, or one made up. Chat messages are deduplicated by (sender,
//! msgid) like a device's resends; the last `admin.push_idempotency_keys` keys of the
//! last day are remembered here too, so a repeated request gets the first answer again and
//! nothing is sent twice. Push tokens (`admin.push_tokens`) may call this endpoint only,
//! each at most `admin.push_rate_per_sec` requests a second (then `429`); the admin token
//! may call it too, unlimited. Bad input is a `400` naming the field.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arcstr::ArcStr;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Json, Router};
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tern_codec::{ByteString, QoS};

use super::http::{body, AdminState, ApiError, ApiResult};
use crate::im::inbox::MSGID;
use crate::im::topics::{classify, valid_id, Address};
use crate::protocol::Message;

/// How long an idempotency key's answer is remembered.
const KEY_TTL: Duration = Duration::from_secs(86_400);

pub(super) fn routes() -> Router<Arc<AdminState>> {
    Router::new().route("/v1/messages", axum::routing::post(push))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushRequest {
    to: Target,
    from: Option<String>,
    payload: Option<String>,
    payload_base64: Option<String>,
    qos: Option<u8>,
    retain: Option<bool>,
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum Target {
    User(String),
    Users(Vec<String>),
    Group(String),
    Topic(String),
    Broadcast(String),
}

/// The answer: the message id, and per recipient user for the batch form.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Pushed {
    msgid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    users: Option<Vec<PushedTo>>,
    /// For a plain topic: whether some subscription matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    matched: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
struct PushedTo {
    user: String,
    msgid: String,
}

/// The answers of recent idempotency keys, bounded in number and age.
pub(super) struct Idempotency {
    answers: HashMap<String, (Instant, Pushed)>,
    order: VecDeque<String>,
    max: usize,
}

impl Idempotency {
    pub(super) fn new(max: usize) -> Idempotency {
        Idempotency {
            answers: HashMap::new(),
            order: VecDeque::new(),
            max,
        }
    }

    fn get(&mut self, key: &str, now: Instant) -> Option<Pushed> {
        self.forget_old(now);
        self.answers.get(key).map(|(_, pushed)| pushed.clone())
    }

    fn put(&mut self, key: String, pushed: Pushed, now: Instant) {
        if self.max == 0 {
            return;
        }
        while self.order.len() >= self.max {
            if let Some(oldest) = self.order.pop_front() {
                self.answers.remove(&oldest);
            }
        }
        if self.answers.insert(key.clone(), (now, pushed)).is_none() {
            self.order.push_back(key);
        }
    }

    fn forget_old(&mut self, now: Instant) {
        while let Some(oldest) = self.order.front() {
            match self.answers.get(oldest) {
                Some((at, _)) if now.duration_since(*at) < KEY_TTL => break,
                _ => {
                    if let Some(key) = self.order.pop_front() {
                        self.answers.remove(&key);
                    }
                }
            }
        }
    }
}

async fn push(
    State(state): State<Arc<AdminState>>,
    bytes: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Pushed>)> {
    let request: PushRequest = body(&bytes)?;
    let payload = match (request.payload, request.payload_base64) {
        (Some(text), None) => Bytes::from(text),
        (None, Some(b64)) => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| ApiError::bad_request(format!("payload_base64: {e}")))?,
        ),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "payload, payload_base64: give one, not both",
            ))
        }
        (None, None) => return Err(ApiError::bad_request("payload: missing")),
    };
    if payload.len() > state.push.max_payload {
        return Err(ApiError::bad_request(format!(
            "payload: {} bytes, more than limits.max_packet_size allows",
            payload.len()
        )));
    }
    if let Some(key) = &request.idempotency_key {
        if key.is_empty() || key.len() > 256 {
            return Err(ApiError::bad_request("idempotency_key: 1 to 256 bytes"));
        }
        if let Some(pushed) = state.push.idempotency().get(key, Instant::now()) {
            return Ok((StatusCode::OK, Json(pushed)));
        }
    }
    let msgid = request
        .idempotency_key
        .clone()
        .unwrap_or_else(|| nuid::next().to_string());
    let chat = matches!(
        request.to,
        Target::User(_) | Target::Users(_) | Target::Group(_)
    );
    if chat && (request.qos.is_some() || request.retain.is_some()) {
        return Err(ApiError::bad_request(
            "qos, retain: only for a topic (chat messages are stored and numbered)",
        ));
    }
    let from = match (&request.from, chat) {
        (Some(from), true) if valid_id(from) => Some(ArcStr::from(from.as_str())),
        (Some(from), true) => {
            return Err(ApiError::bad_request(format!(
                "from: {from:?} is not a user id"
            )))
        }
        (None, true) => {
            return Err(ApiError::bad_request(
                "from: missing (the sender users see)",
            ))
        }
        (Some(_), false) => {
            return Err(ApiError::bad_request(
                "from: only for users and groups (topic and broadcast messages have no sender)",
            ))
        }
        (None, false) => None,
    };
    let pushed = match (request.to, from) {
        (Target::User(user), Some(from)) => {
            let users = push_chat(&state, &from, &[user], &payload, &msgid, false).await?;
            Pushed {
                msgid,
                users: Some(users),
                matched: None,
            }
        }
        (Target::Users(users), Some(from)) => {
            if users.is_empty() || users.len() > state.push.max_recipients {
                return Err(ApiError::bad_request(format!(
                    "to.users: 1 to {} users (admin.push_max_recipients)",
                    state.push.max_recipients
                )));
            }
            let users = push_chat(&state, &from, &users, &payload, &msgid, true).await?;
            Pushed {
                msgid,
                users: Some(users),
                matched: None,
            }
        }
        (Target::Group(gid), Some(from)) => {
            if !valid_id(&gid) {
                return Err(ApiError::bad_request(format!(
                    "to.group: {gid:?} is not a group id"
                )));
            }
            let message = chat_message(&format!("group/{gid}"), &payload, &msgid);
            let (routed, durable) = state.router.chat(&from, message, None, true).await?;
            if routed.refused.is_some() {
                return Err(ApiError::bad_request(format!(
                    "from: {from} is not a member of group {gid} (or there is no such group)"
                )));
            }
            durable.await?;
            Pushed {
                msgid,
                users: None,
                matched: Some(routed.matched),
            }
        }
        (Target::Topic(topic), None) => {
            let qos = qos(request.qos)?;
            if tern_codec::topic::validate_topic_name(&topic).is_err()
                || classify(&topic) != Address::Plain
            {
                return Err(ApiError::bad_request(format!(
                    "to.topic: {topic:?} is not a plain topic name (chat topics: use user, users, group or broadcast)"
                )));
            }
            let mut message = chat_message(&topic, &payload, &msgid);
            message.qos = qos;
            message.retain = request.retain.unwrap_or(false);
            let (routed, durable) = state
                .router
                .publish(&Arc::new(message), None, qos != QoS::AtMostOnce)
                .await?;
            durable.await?;
            Pushed {
                msgid,
                users: None,
                matched: Some(routed.matched),
            }
        }
        (Target::Broadcast(channel), None) => {
            if request.qos.is_some() || request.retain.is_some() {
                return Err(ApiError::bad_request(
                    "qos, retain: only for a topic (broadcasts go to connected devices only)",
                ));
            }
            let topic = format!("broadcast/{channel}");
            if channel.is_empty() || tern_codec::topic::validate_topic_name(&topic).is_err() {
                return Err(ApiError::bad_request(format!(
                    "to.broadcast: {channel:?} is not a channel name"
                )));
            }
            let permit = state
                .push
                .broadcasts
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| crate::router::RouterGone)?;
            let message = chat_message(&topic, &payload, &msgid);
            let (routed, _) = state
                .router
                .broadcast(&Arc::new(message), None, permit, false)
                .await?;
            Pushed {
                msgid,
                users: None,
                matched: Some(routed.matched),
            }
        }
        // `from` was settled from the target's kind above.
        (_, _) => return Err(ApiError::internal("sender and target disagree")),
    };
    if let Some(key) = request.idempotency_key {
        state
            .push
            .idempotency()
            .put(key, pushed.clone(), Instant::now());
    }
    Ok((StatusCode::CREATED, Json(pushed)))
}

/// A DM from `from` to each user, stored before the answer. In the batch form each copy's
/// msgid is `{msgid}:{user}`, so that each is deduplicated on its own.
async fn push_chat(
    state: &AdminState,
    from: &ArcStr,
    users: &[String],
    payload: &Bytes,
    msgid: &str,
    batch: bool,
) -> ApiResult<Vec<PushedTo>> {
    if let Some(bad) = users.iter().find(|u| !valid_id(u)) {
        return Err(ApiError::bad_request(format!(
            "to: {bad:?} is not a user id"
        )));
    }
    let mut stored = Vec::with_capacity(users.len());
    let mut pushed = Vec::with_capacity(users.len());
    for user in users {
        let id = if batch {
            format!("{msgid}:{user}")
        } else {
            msgid.to_string()
        };
        let message = chat_message(&format!("dm/{user}"), payload, &id);
        let (_, durable) = state.router.chat(from, message, None, true).await?;
        stored.push(durable);
        pushed.push(PushedTo {
            user: user.clone(),
            msgid: id,
        });
    }
    for durable in stored {
        durable.await?;
    }
    Ok(pushed)
}

fn chat_message(topic: &str, payload: &Bytes, msgid: &str) -> Message {
    let mut message = Message::new(
        ByteString::from(topic.to_string()),
        QoS::AtLeastOnce,
        payload.clone(),
    );
    message.properties.user_properties.push((
        ByteString::from_static(MSGID),
        ByteString::from(msgid.to_string()),
    ));
    message
}

fn qos(qos: Option<u8>) -> ApiResult<QoS> {
    match qos.unwrap_or(1) {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => Ok(QoS::ExactlyOnce),
        other => Err(ApiError::bad_request(format!(
            "qos: {other} is not 0, 1 or 2"
        ))),
    }
}

/// What pushing shares: the push tokens and their rate buckets, recent idempotency keys,
/// the broadcast permits, the bounds.
pub(crate) struct PushState {
    pub(super) tokens: Vec<String>,
    buckets: Mutex<Vec<Bucket>>,
    rate_per_sec: f64,
    idempotency: Mutex<Idempotency>,
    pub(super) max_recipients: usize,
    pub(super) max_payload: usize,
    broadcasts: Arc<tokio::sync::Semaphore>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl PushState {
    pub(crate) fn new(
        config: &crate::config::Config,
        broadcasts: Arc<tokio::sync::Semaphore>,
    ) -> PushState {
        let admin = &config.admin;
        let now = Instant::now();
        PushState {
            tokens: admin.push_tokens.clone(),
            buckets: Mutex::new(
                admin
                    .push_tokens
                    .iter()
                    .map(|_| Bucket {
                        tokens: f64::from(admin.push_rate_per_sec),
                        at: now,
                    })
                    .collect(),
            ),
            rate_per_sec: f64::from(admin.push_rate_per_sec),
            idempotency: Mutex::new(Idempotency::new(admin.push_idempotency_keys)),
            max_recipients: admin.push_max_recipients,
            max_payload: config.limits.max_packet_size as usize,
            broadcasts,
        }
    }

    fn idempotency(&self) -> std::sync::MutexGuard<'_, Idempotency> {
        self.idempotency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one request from push token `index`'s bucket (refilled at the rate, holding
    /// at most a second's worth); `false` when it is empty.
    pub(super) fn take(&self, index: usize) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(bucket) = buckets.get_mut(index) else {
            return false;
        };
        let now = Instant::now();
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.rate_per_sec;
        bucket.tokens = (bucket.tokens + refill).min(self.rate_per_sec);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
