//! The admin HTTP/JSON API, served by the broker (axum, HTTP/1.1, no TLS: bind it to
//! loopback or put a TLS proxy in front). `docs/admin-api.md` documents every endpoint.
//!
//! Every endpoint but `GET /v1/health` and `GET /metrics` (Prometheus, see
//! [`crate::metrics`]) needs `Authorization: Bearer <token>`; a missing or wrong token is
//! `401` with a JSON error. Errors are `{"error": "..."}` with `400` (bad
//! request or value), `404` (no such user, group, session, topic or endpoint), `405`
//! (method), `409` (already exists), `500` (storage failed) or `503` (the broker is
//! stopping).
//!
//! Reads wait for the storage writer to apply everything submitted before them
//! ([`Writer::barrier`]), then run the [`model`] functions on a blocking thread. Changes go
//! through the broker, never underneath it: user changes are checked and hashed here
//! ([`user_ops`]) and written through the writer; group changes and retained deletions are
//! router commands (the router owns the in-memory group table and the retained tree). A
//! change is answered only once it is durable.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use tern_storage::{StorageError, Store, Writer};

use super::model::{self, Deleted, GroupView, Health, UserView};
use super::token;
use crate::config::Config;
use crate::im::directory::{user_ops, ChangeError, GroupChange, UserChange};
use crate::metrics::{self, Metrics};
use crate::protocol::now_ms;
use crate::protocol::Close;
use crate::router::{RouterGone, RouterHandle};
use tern_codec::ReasonCode;

/// Default number of entries of `GET /v1/sessions/{id}/queue` and `GET /v1/inbox/{user}`.
pub const DEFAULT_LIMIT: usize = 20;
/// Default number of topics in `GET /v1/retained/stats`.
pub const DEFAULT_TOP: usize = 10;

/// Why the admin API could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen for the admin API on {addr}: {source} (set [admin] listen, or enabled = false)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the handlers share.
pub(super) struct AdminState {
    pub(super) router: RouterHandle,
    pub(super) writer: Writer,
    metrics: Arc<Metrics>,
    token: String,
    /// User changes read then write the store: one at a time, so that two concurrent adds
    /// of the same user cannot both pass the existence check.
    users: tokio::sync::Mutex<()>,
    /// On a cluster node: users and groups live in the cluster, and changes go there.
    pub(super) cluster: Option<crate::cluster::ClusterAdmin>,
    /// Token revocations and reloads.
    pub(super) access: Arc<crate::access::Access>,
    /// Push tokens, their rates, idempotency keys (`POST /v1/messages`).
    pub(super) push: super::push_api::PushState,
}

/// The bound, not yet serving, admin API.
pub struct AdminServer {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    state: AdminState,
    /// `admin.addr` and, for a generated token, `admin.token`: removed on stop.
    files: Vec<PathBuf>,
}

impl AdminServer {
    /// Binds `config.admin.listen`, settles the token (generated if the config has none)
    /// and writes `admin.addr` (and `admin.token`) into the data directory. `access`:
    /// token revocations and reloads; `broadcasts`: the permits that broadcasts pushed
    /// through the API take, as the connections' do.
    pub async fn bind(
        config: &Config,
        router: RouterHandle,
        writer: Writer,
        access: Arc<crate::access::Access>,
        broadcasts: Arc<tokio::sync::Semaphore>,
    ) -> Result<AdminServer, AdminError> {
        let listen = config.admin.listen;
        let bind_error = |source| AdminError::Bind {
            addr: listen,
            source,
        };
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let dir = &config.data_dir;
        // `Server::start` made it already; a store that is not on disk may not have.
        std::fs::create_dir_all(dir).map_err(|source| AdminError::File {
            path: dir.clone(),
            source,
        })?;
        let file_error = |path: PathBuf| move |source| AdminError::File { path, source };
        let token_path = token::token_path(dir);
        let addr_path = token::addr_path(dir);
        let mut files = Vec::new();
        let token = if config.admin.token.is_empty() {
            // The lasting token of `tern init`, else a new one for this run.
            let key_path = token::key_path(dir);
            let token = match token::read_key(dir) {
                Ok(Some(key)) => key,
                Ok(None) => token::generate(),
                Err(source) => {
                    return Err(AdminError::File {
                        path: key_path,
                        source,
                    })
                }
            };
            token::write_private(&token_path, &format!("{token}\n"))
                .map_err(file_error(token_path.clone()))?;
            files.push(token_path);
            token
        } else {
            // A token generated by an earlier run must not mislead the CLI.
            token::remove_quietly(&token_path);
            config.admin.token.clone()
        };
        token::write_private(&addr_path, &format!("{addr}\n"))
            .map_err(file_error(addr_path.clone()))?;
        files.push(addr_path);
        Ok(AdminServer {
            listener,
            addr,
            state: AdminState {
                router,
                writer,
                // Replaced by the broker's own with `with_metrics`.
                metrics: Arc::new(Metrics::new()),
                token,
                users: tokio::sync::Mutex::new(()),
                cluster: None,
                access,
                push: super::push_api::PushState::new(config, broadcasts),
            },
            files,
        })
    }

    /// Serves `metrics` on `GET /metrics` (without this, a set of its own that only the
    /// router's counts ever reach).
    pub(crate) fn with_metrics(mut self, metrics: Arc<Metrics>) -> AdminServer {
        self.state.metrics = metrics;
        self
    }

    /// On a cluster node: changes users and groups in the cluster's directory rather than
    /// here, and shows the cluster's state.
    pub(crate) fn with_cluster(
        mut self,
        cluster: Option<crate::cluster::ClusterAdmin>,
    ) -> AdminServer {
        self.state.cluster = cluster;
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` resolves and the requests in progress are answered, then
    /// removes `admin.addr` and `admin.token`.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let AdminServer {
            listener,
            addr,
            state,
            files,
        } = self;
        tracing::info!(api = %addr, "admin API listening");
        if let Err(e) = axum::serve(listener, app(Arc::new(state)))
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!("admin API stopped: {e}");
        }
        for file in &files {
            token::remove_quietly(file);
        }
    }
}

/// Every route of the API.
fn app(state: Arc<AdminState>) -> Router {
    let protected = Router::new()
        .route("/v1/retained", get(retained_list))
        .route(
            "/v1/retained/message",
            get(retained_get).delete(retained_delete),
        )
        .route("/v1/retained/stats", get(retained_stats))
        .route("/v1/sessions", get(sessions_list))
        .route("/v1/sessions/{client_id}", get(session_show))
        .route("/v1/sessions/{client_id}/queue", get(queue_peek))
        .route("/v1/users", get(users_list).post(user_add))
        .route("/v1/users/{user}", get(user_show).delete(user_delete))
        .route("/v1/users/{user}/password", put(user_passwd))
        .route("/v1/groups", get(groups_list).post(group_create))
        .route("/v1/groups/{gid}", get(group_show).delete(group_delete))
        .route(
            "/v1/groups/{gid}/members/{user}",
            put(group_add).delete(group_remove),
        )
        .route("/v1/inbox/{user}", get(inbox_tail))
        .route("/v1/cluster", get(cluster_status))
        .merge(super::access_api::routes())
        .merge(super::backup_api::routes())
        .merge(super::chat_api::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    // App servers' push tokens reach this one endpoint only.
    let push = super::push_api::routes().route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        require_push_token,
    ));
    Router::new()
        .route("/v1/health", get(health))
        .merge(push)
        .route("/metrics", get(metrics_text))
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// An error answer: status and `{"error": message}`.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub(super) fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> ApiError {
        let status = match e {
            ChangeError::NotFound(_) => StatusCode::NOT_FOUND,
            ChangeError::Exists(_) => StatusCode::CONFLICT,
            ChangeError::Invalid(_) => StatusCode::BAD_REQUEST,
            ChangeError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<RouterGone> for ApiError {
    fn from(_: RouterGone) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the broker is stopping")
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> ApiError {
        match e {
            StorageError::Closed => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the broker is stopping")
            }
            other => ApiError::internal(format!("storage: {other}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, "admin API: {}", self.message);
        }
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

pub(super) type ApiResult<T> = Result<T, ApiError>;

async fn require_token(
    State(state): State<Arc<AdminState>>,
    request: Request,
    next: Next,
) -> Response {
    let (challenge, message) = match bearer(&request) {
        Some(given) if token::matches(given, &state.token) => return next.run(request).await,
        Some(_) => (
            "Bearer error=\"invalid_token\"",
            "wrong admin token (see [admin] token in the config, or {data_dir}/admin.token)",
        ),
        None => (
            "Bearer",
            "missing admin token: send the header Authorization: Bearer <token>",
        ),
    };
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

/// The bearer token of a request, if it sent one.
fn bearer(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
}

/// The admin token, or a push token within its rate.
async fn require_push_token(
    State(state): State<Arc<AdminState>>,
    request: Request,
    next: Next,
) -> Response {
    let given = bearer(&request).map(str::to_string);
    let push = given.as_deref().and_then(|given| {
        state
            .push
            .tokens
            .iter()
            .position(|t| token::matches(given, t))
    });
    match push {
        Some(index) if state.push.take(index) => next.run(request).await,
        Some(_) => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "this push token is over admin.push_rate_per_sec: retry later",
        )
        .into_response(),
        None => require_token(State(state), request, next).await,
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint (see docs/admin-api.md)",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this endpoint (see docs/admin-api.md)",
    )
}

async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

/// `GET /metrics`: the Prometheus exposition, with the router's gauges fresh.
async fn metrics_text(State(state): State<Arc<AdminState>>) -> Response {
    match state.router.stats() {
        Ok(stats) => state.metrics.record_router(&stats),
        Err(gone) => return ApiError::from(gone).into_response(),
    }
    match state.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            )],
            text,
        )
            .into_response(),
        Err(e) => ApiError::internal(format!("encoding the metrics failed: {e}")).into_response(),
    }
}

/// Runs `read` on the store on a blocking thread, after everything submitted before is
/// applied.
async fn read<T: Send + 'static>(
    state: &AdminState,
    read: impl FnOnce(&dyn Store) -> Result<T, ChangeError> + Send + 'static,
) -> ApiResult<T> {
    match state.writer.barrier().await {
        Ok(()) => {}
        Err(StorageError::Closed) => return Err(StorageError::Closed.into()),
        // The failure belongs to whoever submitted that write; reading is still right.
        Err(e) => tracing::warn!("admin API: a storage write failed before this read: {e}"),
    }
    let store = state.writer.store().clone();
    tokio::task::spawn_blocking(move || read(&*store))
        .await
        .map_err(|e| ApiError::internal(format!("reading storage failed: {e}")))?
        .map_err(ApiError::from)
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

pub(super) fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("request body: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterQuery {
    filter: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicQuery {
    topic: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopQuery {
    top: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitQuery {
    limit: Option<usize>,
}

async fn retained_list(
    State(state): State<Arc<AdminState>>,
    q: Result<Query<FilterQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<model::RetainedView>>> {
    let filter = query(q)?.filter.unwrap_or_else(|| "#".to_string());
    read(&state, move |store| model::retained_list(store, &filter))
        .await
        .map(Json)
}

async fn retained_get(
    State(state): State<Arc<AdminState>>,
    q: Result<Query<TopicQuery>, QueryRejection>,
) -> ApiResult<Json<model::RetainedView>> {
    let topic = query(q)?.topic;
    read(&state, move |store| model::retained_get(store, &topic))
        .await
        .map(Json)
}

async fn retained_delete(
    State(state): State<Arc<AdminState>>,
    q: Result<Query<TopicQuery>, QueryRejection>,
) -> ApiResult<Json<Deleted>> {
    let topic = query(q)?.topic;
    let durable = state.router.delete_retained(&topic).await?;
    match durable {
        Some(durable) => {
            durable.await?;
            Ok(Json(Deleted { deleted: topic }))
        }
        None => Err(model::no_retained(&topic).into()),
    }
}

async fn retained_stats(
    State(state): State<Arc<AdminState>>,
    q: Result<Query<TopQuery>, QueryRejection>,
) -> ApiResult<Json<model::RetainedStats>> {
    let top = query(q)?.top.unwrap_or(DEFAULT_TOP);
    read(&state, move |store| model::retained_stats(store, top))
        .await
        .map(Json)
}

/// The router's sessions (all, or the one with `client_id`) with their queue totals.
async fn live_sessions(
    state: &AdminState,
    client_id: Option<String>,
) -> ApiResult<Vec<model::SessionView>> {
    let mut summaries = state.router.sessions(client_id.as_deref())?;
    summaries.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    read(state, move |store| session_views(store, summaries)).await
}

/// The router's sessions with their stored queues' totals.
fn session_views(
    store: &dyn Store,
    summaries: Vec<crate::router::SessionSummary>,
) -> Result<Vec<model::SessionView>, ChangeError> {
    summaries
        .into_iter()
        .map(|summary| {
            let queue = if summary.persistent {
                store
                    .queue_stats(&summary.client_id)
                    .map_err(model::storage_error)?
            } else {
                (0, 0)
            };
            Ok(model::SessionView::from_summary(summary, queue))
        })
        .collect()
}

async fn sessions_list(
    State(state): State<Arc<AdminState>>,
) -> ApiResult<Json<Vec<model::SessionView>>> {
    live_sessions(&state, None).await.map(Json)
}

async fn session_show(
    State(state): State<Arc<AdminState>>,
    Path(client_id): Path<String>,
) -> ApiResult<Json<model::SessionView>> {
    let local = live_sessions(&state, Some(client_id.clone()))
        .await?
        .into_iter()
        .find(|s| s.client_id == client_id);
    if let Some(mut view) = local {
        view.node = state.cluster.as_ref().map(|c| c.node().to_string());
        return Ok(Json(view));
    }
    // On a cluster node, the session may be on another node.
    if let Some(cluster) = &state.cluster {
        let answers = cluster
            .find_sessions(&client_id)
            .await
            .map_err(|e| ApiError::unavailable(format!("asking the other nodes: {e}")))?;
        let mut found: Vec<model::SessionView> = answers
            .iter()
            .filter_map(|answer| serde_json::from_slice::<Vec<model::SessionView>>(answer).ok())
            .flatten()
            .filter(|s| s.client_id == client_id)
            .collect();
        // A connected one first (an offline persistent copy may linger elsewhere).
        found.sort_by_key(|s| !s.connected);
        if let Some(view) = found.into_iter().next() {
            return Ok(Json(view));
        }
    }
    Err(model::no_session(&client_id).into())
}

/// What this node holds of `client_id`, as the JSON list another node's lookup gets (see
/// `cluster::lookup`); an empty list when nothing, or when it cannot tell.
pub(crate) async fn session_views_json(
    router: &RouterHandle,
    writer: &Writer,
    client_id: &str,
    node: &str,
) -> Vec<u8> {
    let summaries: Vec<_> = router
        .sessions(Some(client_id))
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.client_id == client_id)
        .collect();
    let store = writer.store().clone();
    let mut views = tokio::task::spawn_blocking(move || session_views(&*store, summaries))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    for view in &mut views {
        view.node = Some(node.to_string());
    }
    serde_json::to_vec(&views).unwrap_or_else(|_| b"[]".to_vec())
}

async fn queue_peek(
    State(state): State<Arc<AdminState>>,
    Path(client_id): Path<String>,
    q: Result<Query<LimitQuery>, QueryRejection>,
) -> ApiResult<Json<model::QueuePeek>> {
    let limit = query(q)?.limit.unwrap_or(DEFAULT_LIMIT);
    let known = state.router.sessions(Some(&client_id))?;
    if !known.iter().any(|s| s.client_id == client_id) {
        return Err(model::no_session(&client_id).into());
    }
    read(&state, move |store| {
        model::queue_peek(store, &client_id, limit)
    })
    .await
    .map(Json)
}

async fn cluster_status(
    State(state): State<Arc<AdminState>>,
) -> ApiResult<Json<crate::cluster::ClusterStatus>> {
    let Some(cluster) = &state.cluster else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "this broker is not a cluster node ([cluster] engine = \"none\")",
        ));
    };
    cluster
        .status()
        .await
        .map(Json)
        .map_err(|e| ApiError::unavailable(e.to_string()))
}

async fn users_list(State(state): State<Arc<AdminState>>) -> ApiResult<Json<Vec<UserView>>> {
    read(&state, model::users).await.map(Json)
}

async fn user_show(
    State(state): State<Arc<AdminState>>,
    Path(user): Path<String>,
) -> ApiResult<Json<UserView>> {
    read(&state, move |store| model::user(store, &user))
        .await
        .map(Json)
}

/// Checks a user change against the store, hashes, writes it and waits until it is
/// durable; returns the op's user, if it wrote one.
async fn change_user(state: &AdminState, change: UserChange) -> ApiResult<Option<UserView>> {
    if let Some(directory) = state.cluster.as_ref().map(|c| c.directory()) {
        // Every node (this one included) closes the user's connections as it copies the
        // change.
        let user = directory.change_user(change).await?;
        return Ok(user.as_ref().map(UserView::from));
    }
    let _one_at_a_time = state.users.lock().await;
    let asked = change.clone();
    let ops = read(state, move |store| user_ops(store, &asked, now_ms())).await?;
    let user = ops.iter().find_map(|op| match op {
        tern_storage::Op::PutUser(u) => Some(UserView::from(u)),
        _ => None,
    });
    state.writer.submit(ops).await.await?;
    // Connections logged in with credentials that no longer hold are closed: a deleted
    // user, or a password changed because it leaked, must not keep a live session.
    let closed = match &change {
        UserChange::Delete { user } => Some((user.clone(), "the user was deleted")),
        UserChange::Passwd { user, .. } => Some((user.clone(), "the password was changed")),
        UserChange::Add { .. } => None,
    };
    if let Some((user, why)) = closed {
        let close = Close::new(ReasonCode::NotAuthorized, why);
        let _ = state.router.close_user(&user, &close);
    }
    Ok(user)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    user: String,
    password: String,
    #[serde(default)]
    operator: bool,
}

async fn user_add(
    State(state): State<Arc<AdminState>>,
    bytes: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    let new: NewUser = body(&bytes)?;
    let change = UserChange::Add {
        user: new.user,
        password: new.password,
        operator: new.operator,
    };
    let user = change_user(&state, change).await?;
    let user = user.ok_or_else(|| ApiError::internal("no user was written"))?;
    Ok((StatusCode::CREATED, Json(user)))
}

async fn user_delete(
    State(state): State<Arc<AdminState>>,
    Path(user): Path<String>,
) -> ApiResult<Json<Deleted>> {
    let change = UserChange::Delete { user: user.clone() };
    change_user(&state, change).await?;
    Ok(Json(Deleted { deleted: user }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPassword {
    password: String,
}

async fn user_passwd(
    State(state): State<Arc<AdminState>>,
    Path(user): Path<String>,
    bytes: axum::body::Bytes,
) -> ApiResult<Json<UserView>> {
    let new: NewPassword = body(&bytes)?;
    let change = UserChange::Passwd {
        user,
        password: new.password,
    };
    let user = change_user(&state, change).await?;
    user.map(Json)
        .ok_or_else(|| ApiError::internal("no user was written"))
}

async fn groups_list(State(state): State<Arc<AdminState>>) -> ApiResult<Json<Vec<GroupView>>> {
    read(&state, model::groups).await.map(Json)
}

async fn group_show(
    State(state): State<Arc<AdminState>>,
    Path(gid): Path<String>,
) -> ApiResult<Json<GroupView>> {
    read(&state, move |store| model::group(store, &gid))
        .await
        .map(Json)
}

/// Hands a group change to the router (which owns the group table), waits until it is
/// durable, and returns the group as stored (`None` once deleted).
async fn change_group(state: &AdminState, change: GroupChange) -> ApiResult<Option<GroupView>> {
    let gid = match &change {
        GroupChange::Create { gid, .. }
        | GroupChange::Delete { gid }
        | GroupChange::Add { gid, .. }
        | GroupChange::Remove { gid, .. } => gid.clone(),
    };
    let deleting = matches!(change, GroupChange::Delete { .. });
    if let Some(directory) = state.cluster.as_ref().map(|c| c.directory()) {
        directory.change_group(change).await?;
    } else {
        let durable = state.router.change_group(change).await??;
        durable.await?;
    }
    if deleting {
        return Ok(None);
    }
    read(state, move |store| model::group(store, &gid))
        .await
        .map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGroup {
    gid: String,
    #[serde(default)]
    members: Vec<String>,
}

async fn group_create(
    State(state): State<Arc<AdminState>>,
    bytes: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<GroupView>)> {
    let new: NewGroup = body(&bytes)?;
    let change = GroupChange::Create {
        gid: new.gid,
        members: new.members,
    };
    let group = change_group(&state, change).await?;
    let group = group.ok_or_else(|| ApiError::internal("the group was not written"))?;
    Ok((StatusCode::CREATED, Json(group)))
}

async fn group_delete(
    State(state): State<Arc<AdminState>>,
    Path(gid): Path<String>,
) -> ApiResult<Json<Deleted>> {
    change_group(&state, GroupChange::Delete { gid: gid.clone() }).await?;
    Ok(Json(Deleted { deleted: gid }))
}

async fn group_add(
    State(state): State<Arc<AdminState>>,
    Path((gid, user)): Path<(String, String)>,
) -> ApiResult<Json<GroupView>> {
    change_group(&state, GroupChange::Add { gid, user })
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::internal("the group was not written"))
}

async fn group_remove(
    State(state): State<Arc<AdminState>>,
    Path((gid, user)): Path<(String, String)>,
) -> ApiResult<Json<GroupView>> {
    change_group(&state, GroupChange::Remove { gid, user })
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::internal("the group was not written"))
}

async fn inbox_tail(
    State(state): State<Arc<AdminState>>,
    Path(user): Path<String>,
    q: Result<Query<LimitQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<model::InboxView>>> {
    let limit = query(q)?.limit.unwrap_or(DEFAULT_LIMIT);
    read(&state, move |store| model::inbox_tail(store, &user, limit))
        .await
        .map(Json)
}
