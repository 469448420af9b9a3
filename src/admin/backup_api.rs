//! `POST /v1/backup {"dir": "/var/backups/tern-2026-12-07"}`: a consistent copy of the
//! running broker's database (a RocksDB checkpoint: hard links where the directory is on
//! the same file system) into a directory that does not exist yet, holding everything
//! acknowledged before the request, while traffic goes on. A broker starts on the copy as
//! on the original (`--data-dir`). `201` with `{"dir": ...}`; `400` for a relative or
//! existing `dir`.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use tern_storage::StorageError;

use super::http::{body, AdminState, ApiError, ApiResult};
use super::model::BackupView;

pub(super) fn routes() -> Router<Arc<AdminState>> {
    Router::new().route("/v1/backup", post(backup))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Backup {
    dir: PathBuf,
}

async fn backup(
    State(state): State<Arc<AdminState>>,
    bytes: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<BackupView>)> {
    let Backup { dir } = body(&bytes)?;
    if !dir.is_absolute() {
        return Err(ApiError::bad_request(format!(
            "dir: {} is not an absolute path (the broker's working directory is not yours)",
            dir.display()
        )));
    }
    if dir.exists() {
        return Err(ApiError::bad_request(format!(
            "dir: {} already exists: a backup goes to a new directory",
            dir.display()
        )));
    }
    // Everything submitted before the request is applied first: what was acknowledged is
    // in the store (and its log) when the checkpoint is taken.
    match state.writer.barrier().await {
        Ok(()) | Err(StorageError::Rocks { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let store = state.writer.store().clone();
    let target = dir.clone();
    tokio::task::spawn_blocking(move || store.checkpoint(&target))
        .await
        .map_err(|e| ApiError::internal(format!("backup task: {e}")))?
        .map_err(|e| ApiError::internal(format!("backup: {e}")))?;
    tracing::info!(dir = %dir.display(), "admin API: backup written");
    Ok((StatusCode::CREATED, Json(BackupView::of(&dir))))
}
