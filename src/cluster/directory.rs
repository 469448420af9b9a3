//! Users and groups, cluster-wide: the bucket `TERN_DIRECTORY` holds each user
//! (`u.<name>`) and each group (`g.<gid>`) as JSON, a deleted one as a record saying so
//! (its name stays readable, whatever the key escaping did to it). An operator's change
//! on any node is checked against the bucket's current record (the same checks as on one
//! node: `im::directory`) and written on the condition that nobody changed it meanwhile
//! (compare-and-set on the revision; on a conflict it is checked again).
//!
//! Every node follows the bucket with one ordered consumer and copies each record into
//! its own store (and groups into its router), so logins and group messages on any node
//! see the same users and groups. A node copies what the bucket holds before it takes
//! clients; a change made through a node's admin API returns once that node has copied
//! it. A user deleted or given a new password loses its connections on every node.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tern_codec::ReasonCode;
use tern_storage::{Op, StoredGroup, StoredUser, Writer};
use tokio::sync::watch;

use std::sync::Arc;

use super::subject;
use crate::access::{Access, Revocation};
use crate::im::directory::{user_change, ChangeError, GroupChange, Groups, UserChange};
use crate::protocol::{now_ms, Close};
use crate::router::RouterHandle;

const BUCKET: &str = "TERN_DIRECTORY";

/// Compare-and-set attempts before a change is given up (each conflict is a change of
/// the same user or group on another node).
const ATTEMPTS: usize = 16;

/// How long a change waits for this node to copy it.
const COPY_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error(transparent)]
    Bucket(#[from] super::BucketError),
    #[error("cannot follow the bucket {BUCKET}: {0}")]
    Follow(#[source] async_nats::Error),
}

/// A record of the bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Record {
    User {
        user: String,
        password_hash: String,
        operator: bool,
        created_at_ms: u64,
    },
    UserDeleted {
        user: String,
    },
    Group {
        gid: String,
        members: Vec<String>,
        created_at_ms: u64,
    },
    GroupDeleted {
        gid: String,
    },
    /// A token deny-list entry (`access::Revocation`), under `r.t.<jti>` or `r.u.<user>`.
    Revoked {
        revocation: Revocation,
    },
}

impl Record {
    fn user(user: &str, stored: Option<StoredUser>) -> Record {
        match stored {
            Some(u) => Record::User {
                user: u.user,
                password_hash: u.password_hash,
                operator: u.operator,
                created_at_ms: u.created_at_ms,
            },
            None => Record::UserDeleted {
                user: user.to_string(),
            },
        }
    }

    fn group(gid: &str, stored: Option<StoredGroup>) -> Record {
        match stored {
            Some(g) => Record::Group {
                gid: g.gid,
                members: g.members,
                created_at_ms: g.created_at_ms,
            },
            None => Record::GroupDeleted {
                gid: gid.to_string(),
            },
        }
    }

    fn as_user(&self) -> Option<StoredUser> {
        match self {
            Record::User {
                user,
                password_hash,
                operator,
                created_at_ms,
            } => Some(StoredUser {
                user: user.clone(),
                password_hash: password_hash.clone(),
                operator: *operator,
                created_at_ms: *created_at_ms,
            }),
            _ => None,
        }
    }

    fn as_group(&self) -> Option<StoredGroup> {
        match self {
            Record::Group {
                gid,
                members,
                created_at_ms,
            } => Some(StoredGroup {
                gid: gid.clone(),
                members: members.clone(),
                created_at_ms: *created_at_ms,
            }),
            _ => None,
        }
    }
}

fn user_key(user: &str) -> String {
    format!("u.{}", subject::key(user))
}

fn group_key(gid: &str) -> String {
    format!("g.{}", subject::key(gid))
}

fn revocation_key(revocation: &Revocation) -> String {
    match revocation {
        Revocation::Token { id, .. } => format!("r.t.{}", subject::key(id)),
        Revocation::User { user, .. } => format!("r.u.{}", subject::key(user)),
    }
}

/// The cluster's users and groups, for operators' changes; cheap to clone.
#[derive(Clone)]
pub(crate) struct Directory {
    kv: kv::Store,
    /// The last revision of the bucket this node has copied.
    copied: watch::Receiver<u64>,
    max_group_members: usize,
}

impl Directory {
    /// Opens (or creates) the bucket and copies what it holds into this node's store and
    /// router; returns the directory and the task that copies what comes after.
    pub(super) async fn open(
        jetstream: &jetstream::Context,
        replicas: usize,
        max_group_members: usize,
        router: RouterHandle,
        writer: Writer,
        access: Arc<Access>,
    ) -> Result<(Directory, tokio::task::JoinHandle<()>), DirectoryError> {
        let kv = super::open_bucket(jetstream, super::bucket(BUCKET, replicas)).await?;
        let consumer = kv
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                filter_subject: format!("$KV.{BUCKET}.>"),
                ..Default::default()
            })
            .await
            .map_err(|e| DirectoryError::Follow(e.into()))?;
        let (copied_tx, copied) = watch::channel(0);
        let copier = Copier {
            router,
            writer,
            access,
        };
        // What the bucket holds now, before the node takes clients.
        let mut left = consumer.cached_info().num_pending;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| DirectoryError::Follow(e.into()))?;
        while left > 0 {
            let Some(message) = messages.next().await else {
                break;
            };
            let message = message.map_err(|e| DirectoryError::Follow(e.into()))?;
            let info = message
                .info()
                .map_err(|e| DirectoryError::Follow(e.to_string().into()))?;
            left = info.pending;
            let revision = info.stream_sequence;
            copier.copy(&message.payload).await;
            copied_tx.send_replace(revision);
        }
        let follow = tokio::spawn(async move {
            while let Some(message) = messages.next().await {
                let message = match message {
                    Ok(message) => message,
                    Err(e) => {
                        tracing::warn!("following {BUCKET}: {e}");
                        continue;
                    }
                };
                let revision = message.info().map(|info| info.stream_sequence).ok();
                copier.copy(&message.payload).await;
                if let Some(revision) = revision {
                    copied_tx.send_replace(revision);
                }
            }
        });
        Ok((
            Directory {
                kv,
                copied,
                max_group_members,
            },
            follow,
        ))
    }

    /// Checks and makes a change to a user; returns the user as it is now (`None`:
    /// deleted), once this node has copied it.
    pub(crate) async fn change_user(
        &self,
        change: UserChange,
    ) -> Result<Option<StoredUser>, ChangeError> {
        let name = match &change {
            UserChange::Add { user, .. }
            | UserChange::Delete { user }
            | UserChange::Passwd { user, .. } => user.clone(),
        };
        let key = user_key(&name);
        self.read_decide_write(&name, &key, |existing| {
            let asked = change.clone();
            let name = name.clone();
            async move {
                let existing = existing.and_then(|r| r.as_user());
                // argon2: on a blocking thread.
                let changed =
                    tokio::task::spawn_blocking(move || user_change(existing, &asked, now_ms()))
                        .await
                        .map_err(|e| ChangeError::Storage(e.to_string()))??;
                let record = Record::user(&name, changed.clone());
                Ok((changed, record))
            }
        })
        .await
    }

    /// Checks and makes a change to a group; returns the group as it is now (`None`:
    /// deleted), once this node has copied it.
    pub(crate) async fn change_group(
        &self,
        change: GroupChange,
    ) -> Result<Option<StoredGroup>, ChangeError> {
        let gid = match &change {
            GroupChange::Create { gid, .. }
            | GroupChange::Delete { gid }
            | GroupChange::Add { gid, .. }
            | GroupChange::Remove { gid, .. } => gid.clone(),
        };
        let key = group_key(&gid);
        self.read_decide_write(&gid, &key, |existing| {
            let mut groups = Groups::new(
                existing.and_then(|r| r.as_group()).into_iter().collect(),
                self.max_group_members,
            );
            let decided = groups.apply(&change, now_ms()).map(|op| {
                let changed = match op {
                    Op::PutGroup(group) => Some(group),
                    _ => None,
                };
                let record = Record::group(&gid, changed.clone());
                (changed, record)
            });
            std::future::ready(decided)
        })
        .await
    }

    /// Reads `key`, decides its new record from the one it holds (`decide`, which may
    /// refuse the change), writes it on the condition that nobody wrote the key meanwhile,
    /// and returns what `decide` said once this node has copied the write. A lost race is
    /// decided again, [`ATTEMPTS`] times at most; then `name`'s change is a conflict.
    async fn read_decide_write<T, F, Fut>(
        &self,
        name: &str,
        key: &str,
        mut decide: F,
    ) -> Result<T, ChangeError>
    where
        F: FnMut(Option<Record>) -> Fut,
        Fut: std::future::Future<Output = Result<(T, Record), ChangeError>>,
    {
        for _ in 0..ATTEMPTS {
            let (existing, revision) = self.read(key).await?;
            let (changed, record) = decide(existing).await?;
            if let Some(written) = self.write(key, &record, revision).await? {
                self.until_copied(written).await?;
                return Ok(changed);
            }
        }
        Err(conflict(name))
    }

    /// Adds a token revocation for every node; returns once this node has applied it. A
    /// revocation only ever widens (a later time, an id more), so it is written without a
    /// condition: applying the same one twice changes nothing.
    pub(crate) async fn revoke(&self, revocation: &Revocation) -> Result<(), ChangeError> {
        let record = Record::Revoked {
            revocation: revocation.clone(),
        };
        let value = serde_json::to_vec(&record).map_err(|e| ChangeError::Storage(e.to_string()))?;
        let written = self
            .kv
            .put(revocation_key(revocation), Bytes::from(value))
            .await
            .map_err(unavailable)?;
        self.until_copied(written).await
    }

    /// The record under `key` (`None`: never written, or unreadable) and its revision.
    async fn read(&self, key: &str) -> Result<(Option<Record>, u64), ChangeError> {
        let entry = self.kv.entry(key).await.map_err(unavailable)?;
        Ok(match entry {
            Some(entry) => (serde_json::from_slice(&entry.value).ok(), entry.revision),
            None => (None, 0),
        })
    }

    /// Writes `record` if `key` is still at `revision`: its new revision, or `None` on a
    /// conflict.
    async fn write(
        &self,
        key: &str,
        record: &Record,
        revision: u64,
    ) -> Result<Option<u64>, ChangeError> {
        let value = serde_json::to_vec(record).map_err(|e| ChangeError::Storage(e.to_string()))?;
        match self.kv.update(key, Bytes::from(value), revision).await {
            Ok(written) => Ok(Some(written)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn until_copied(&self, revision: u64) -> Result<(), ChangeError> {
        let mut copied = self.copied.clone();
        let waited = tokio::time::timeout(COPY_WAIT, copied.wait_for(|r| *r >= revision))
            .await
            .map(|copied| copied.is_ok());
        if waited == Ok(true) {
            return Ok(());
        }
        Err(ChangeError::Storage(format!(
            "the change is stored in the cluster but this node has not copied it within {COPY_WAIT:?}"
        )))
    }
}

fn unavailable(e: impl std::fmt::Display) -> ChangeError {
    ChangeError::Storage(format!("the cluster's directory ({BUCKET}): {e}"))
}

fn conflict(name: &str) -> ChangeError {
    ChangeError::Storage(format!(
        "{name} was changed on other nodes {ATTEMPTS} times while this change was checked"
    ))
}

/// Copies records of the bucket into this node.
struct Copier {
    router: RouterHandle,
    writer: Writer,
    access: Arc<Access>,
}

impl Copier {
    async fn copy(&self, payload: &Bytes) {
        if payload.is_empty() {
            // A KV delete or purge marker: never written by tern.
            return;
        }
        let record: Record = match serde_json::from_slice(payload) {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!("skipped a record of {BUCKET}: {e}");
                return;
            }
        };
        match record {
            Record::User { ref user, .. } | Record::UserDeleted { ref user } => {
                self.copy_user(user, record.as_user()).await
            }
            Record::Group { ref gid, .. } | Record::GroupDeleted { ref gid } => {
                if let Ok(Err(e)) = self.router.group_remote(gid, record.as_group()).await {
                    tracing::warn!(%gid, "group not copied from the cluster: {e}");
                }
            }
            Record::Revoked { revocation } => self.copy_revocation(revocation).await,
        }
    }

    /// Adds the revocation to this node's deny-list, and closes the connections of a user
    /// whose tokens were revoked.
    async fn copy_revocation(&self, revocation: Revocation) {
        let access = self.access.clone();
        let applied = revocation.clone();
        match tokio::task::spawn_blocking(move || access.revoke(&applied)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(?revocation, "revocation not copied from the cluster: {e}")
            }
            Err(e) => tracing::error!(?revocation, "revocation not copied from the cluster: {e}"),
        }
        if let Revocation::User { user, .. } = &revocation {
            let close = Close::new(ReasonCode::NotAuthorized, "the user's tokens were revoked");
            let _ = self.router.close_user(user, &close);
        }
    }

    /// Stores the user as the cluster has it, and closes its connections if its
    /// credentials changed.
    async fn copy_user(&self, name: &str, user: Option<StoredUser>) {
        let store = self.writer.store().clone();
        let key = name.to_string();
        let before = tokio::task::spawn_blocking(move || store.user(&key))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        if before == user {
            return;
        }
        let why = match (&before, &user) {
            (Some(_), None) => Some("the user was deleted"),
            (Some(b), Some(u)) if b.password_hash != u.password_hash => {
                Some("the password was changed")
            }
            _ => None,
        };
        let op = match user {
            Some(user) => Op::PutUser(user),
            None => Op::DeleteUser {
                user: name.to_string(),
            },
        };
        if let Err(e) = self.writer.submit(vec![op]).await.await {
            tracing::warn!(user = %name, "user not copied from the cluster: {e}");
            return;
        }
        if let Some(why) = why {
            let close = Close::new(ReasonCode::NotAuthorized, why);
            let _ = self.router.close_user(name, &close);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Record;

    #[test]
    fn records_keep_their_names_and_kinds() {
        let deleted = Record::UserDeleted {
            user: "a.b/c".into(),
        };
        let json = serde_json::to_string(&deleted).expect("encode");
        assert_eq!(json, r#"{"kind":"user_deleted","user":"a.b/c"}"#);
        assert_eq!(
            serde_json::from_str::<Record>(&json).expect("decode"),
            deleted
        );
        assert!(deleted.as_user().is_none() && deleted.as_group().is_none());
    }
}
