//! The admin API's access endpoints (`docs/admin-api.md`):
//!
//! - `POST /v1/tokens/revocations`: `{"jti": ID, "expires_at": SECS}` revokes one token
//!   (kept until `expires_at`, default a day from now), or `{"user": U, "issued_before":
//!   SECS}` every token of a user issued before a time (default now), which also closes
//!   the user's connections; answers the deny-list;
//! - `GET /v1/tokens/revocations`: the deny-list;
//! - `POST /v1/access/reload`: reads the token keys and the ACL file again (what SIGHUP
//!   does); a broken file is a 400 naming it, and the rules in force stay.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tern_codec::ReasonCode;

use super::http::{body, AdminState, ApiError, ApiResult};
use crate::access::revocations::{RevocationError, Revocations};
use crate::access::{Access, AccessError, Reloaded, Revocation};
use crate::im::topics::valid_id;
use crate::protocol::{now_ms, Close};

/// A revoked id is kept this long when the request does not say when its token expires.
const DEFAULT_KEEP_SECS: u64 = 86_400;

pub(super) fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/v1/tokens/revocations", get(revocations_list).post(revoke))
        .route("/v1/access/reload", post(reload))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Revoke {
    jti: Option<String>,
    expires_at: Option<u64>,
    user: Option<String>,
    issued_before: Option<u64>,
}

async fn revocations_list(State(state): State<Arc<AdminState>>) -> ApiResult<Json<Revocations>> {
    Ok(Json(state.access.revoked()))
}

async fn revoke(
    State(state): State<Arc<AdminState>>,
    bytes: axum::body::Bytes,
) -> ApiResult<Json<Revocations>> {
    let request: Revoke = body(&bytes)?;
    let access = &state.access;
    if !access.tokens_enabled() {
        return Err(ApiError::bad_request(
            "token login is off (tokens.enabled = false): there is nothing to revoke",
        ));
    }
    let now = now_ms() / 1_000;
    let revocation = match (request.jti, request.user) {
        (Some(jti), None) => {
            if request.issued_before.is_some() {
                return Err(ApiError::bad_request(
                    "issued_before goes with user, not jti",
                ));
            }
            if jti.is_empty() {
                return Err(ApiError::bad_request("jti must not be empty"));
            }
            Revocation::Token {
                id: jti,
                expires_at: request.expires_at.unwrap_or(now + DEFAULT_KEEP_SECS),
            }
        }
        (None, Some(user)) => {
            if request.expires_at.is_some() {
                return Err(ApiError::bad_request("expires_at goes with jti, not user"));
            }
            if !valid_id(&user) {
                return Err(ApiError::bad_request(format!(
                    "user: {user:?} is not a user id"
                )));
            }
            Revocation::User {
                user,
                before: request.issued_before.unwrap_or(now),
            }
        }
        (Some(_), Some(_)) => return Err(ApiError::bad_request("give jti or user, not both")),
        (None, None) => return Err(ApiError::bad_request("give jti or user")),
    };
    if let Some(cluster) = &state.cluster {
        // Every node (this one included) applies it as it copies it, and closes the
        // user's connections it holds.
        cluster.directory().revoke(&revocation).await?;
        return Ok(Json(access.revoked()));
    }
    let user = match &revocation {
        Revocation::User { user, .. } => Some(user.clone()),
        Revocation::Token { .. } => None,
    };
    revoke_blocking(access.clone(), revocation).await?;
    if let Some(user) = user {
        let close = Close::new(ReasonCode::NotAuthorized, "the user's tokens were revoked");
        let _ = state.router.close_user(&user, &close);
    }
    Ok(Json(access.revoked()))
}

/// Adds `revocation` to the deny-list (a file write and sync) on a blocking thread.
async fn revoke_blocking(access: Arc<Access>, revocation: Revocation) -> ApiResult<()> {
    tokio::task::spawn_blocking(move || access.revoke(&revocation))
        .await
        .map_err(|e| ApiError::internal(format!("revocation task: {e}")))?
        .map_err(|e| match e {
            AccessError::Revocations(RevocationError::Full(_)) => {
                ApiError::new(StatusCode::CONFLICT, e.to_string())
            }
            other => ApiError::internal(other.to_string()),
        })
}

async fn reload(State(state): State<Arc<AdminState>>) -> ApiResult<Json<Reloaded>> {
    let access = state.access.clone();
    let reloaded = tokio::task::spawn_blocking(move || access.reload())
        .await
        .map_err(|e| ApiError::internal(format!("reload task: {e}")))?
        .map_err(|e| {
            ApiError::bad_request(format!("reload failed, the rules in force stay: {e}"))
        })?;
    tracing::info!(
        token_keys = reloaded.token_keys,
        acl_file = reloaded.acl_file,
        "admin API: token keys and ACL file reloaded"
    );
    Ok(Json(reloaded))
}
