//! Chat state for app servers and operators (docs/admin-api.md, "Presence and read
//! receipts"):
//!
//! - `POST /v1/presence` `{"users": ["alice", "bob"]}`: each user's presence as its
//!   devices see it on `presence/{user}`, with the devices connected now;
//! - `GET /v1/groups/{gid}/reads/{id}`: who of the group read message `id` (the members
//!   but its sender, split by their read position in the group).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::http::{body, AdminState, ApiError, ApiResult};
use crate::im::reads::{group_reads, GroupReadsError};
use crate::im::topics::valid_id;

/// Users one presence request may name.
const MAX_PRESENCE_USERS: usize = 10_000;

pub(super) fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/v1/presence", post(presence))
        .route("/v1/groups/{gid}/reads/{id}", get(reads))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceRequest {
    users: Vec<String>,
}

async fn presence(
    State(state): State<Arc<AdminState>>,
    bytes: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let PresenceRequest { users } = body(&bytes)?;
    if users.len() > MAX_PRESENCE_USERS {
        return Err(ApiError::bad_request(format!(
            "users: {} named, at most {MAX_PRESENCE_USERS} per request",
            users.len()
        )));
    }
    if let Some(bad) = users.iter().find(|u| !valid_id(u)) {
        return Err(ApiError::bad_request(format!(
            "users: {bad:?} is not a user id"
        )));
    }
    let states = state.router.presence_of(&users)?;
    let mut answer = Map::new();
    for (user, presence) in users.into_iter().zip(states) {
        let mut entry = presence
            .published
            .and_then(|p| serde_json::from_slice::<Map<String, Value>>(&p).ok())
            .unwrap_or_else(|| {
                let mut never = Map::new();
                never.insert("online".into(), Value::Bool(false));
                never
            });
        entry.insert("devices".into(), json!(presence.devices));
        answer.insert(user, Value::Object(entry));
    }
    Ok(Json(Value::Object(answer)))
}

async fn reads(
    State(state): State<Arc<AdminState>>,
    Path((gid, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("id: {id:?} is not a message id")))?;
    state.writer.barrier().await?;
    let store = state.writer.store().clone();
    let answer = tokio::task::spawn_blocking(move || group_reads(&*store, &gid, id, None))
        .await
        .map_err(|e| ApiError::internal(format!("reads task: {e}")))?;
    match answer {
        Ok(reads) => Ok(Json(json!({
            "id": reads.id.to_string(),
            "read": reads.read,
            "unread": reads.unread,
            "read_count": reads.read.len(),
            "members": reads.read.len() + reads.unread.len(),
        }))),
        Err(GroupReadsError::Storage(e)) => Err(e.into()),
        Err(e) => Err(ApiError::new(StatusCode::NOT_FOUND, e.to_string())),
    }
}
