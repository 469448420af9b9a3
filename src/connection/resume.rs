//! A CONNECT on a cluster node, as the cluster's copy of persistent sessions sees it (see
//! `cluster/session_state.rs`): a clean start voids the copy; a resume of a session this
//! node does not hold (it was on a node that died, or on another node since) makes the
//! copy this node's session, with the inbox entries its device missed queued ahead of
//! what arrives live (`router/adopt.rs`). Either way the connection's claim is handed to
//! the cluster's writer, which keeps the copy and the device's cursor from then on.

use std::time::Duration;

use arcstr::ArcStr;

use super::{ConnectionError, Context};
use crate::cluster::SessionStates;
use crate::im::inbox::for_recipient;
use crate::protocol::Message;
use crate::router::SessionChange;

/// How long the cluster's copy is read for, and the adopted session's subscriptions are
/// waited on to take effect in NATS, before the CONNECT goes on without.
const STEP_TIMEOUT: Duration = Duration::from_secs(2);

/// What the CONNECT asks of its session.
pub(super) struct Resume<'a> {
    pub(super) client_id: &'a ArcStr,
    pub(super) user: &'a ArcStr,
    pub(super) clean_start: bool,
    pub(super) persistent: bool,
    /// The registry claim the connection attaches under.
    pub(super) revision: u64,
}

/// Prepares the router for the CONNECT (before it attaches): see the module's docs.
pub(super) async fn prepare(
    ctx: &Context,
    states: &SessionStates,
    resume: Resume<'_>,
) -> Result<(), ConnectionError> {
    let Resume {
        client_id,
        user,
        clean_start,
        persistent,
        revision,
    } = resume;
    let attached = |born, fresh, cursor| SessionChange::Attached {
        client_id: client_id.clone(),
        revision,
        born,
        fresh,
        cursor,
    };
    let found = if clean_start {
        None
    } else {
        match tokio::time::timeout(STEP_TIMEOUT, states.load(client_id)).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::warn!(%client_id, "cluster copy of the session not read: {e}");
                None
            }
            Err(_) => {
                tracing::warn!(%client_id, "cluster copy of the session not read in time");
                None
            }
        }
    };
    let Some(found) = found else {
        // A new session: the device has nothing of its inbox yet.
        let cursor = if persistent {
            next_seq(ctx, user).await
        } else {
            None
        };
        states.change(attached(revision, clean_start, cursor));
        return Ok(());
    };
    let cursor = found.cursor;
    states.change(attached(found.record.born, false, cursor));
    let held_elsewhere = found.record.node != states.node();
    if !ctx
        .router
        .adopt(found.record.session, held_elsewhere)
        .await?
    {
        return Ok(());
    }
    tracing::info!(%client_id, %user, from = %found.record.node, ?cursor, "session resumed from the cluster's copy");
    // What the inbox log republishes from here on reaches the session; what it held
    // before is read below.
    if tokio::time::timeout(STEP_TIMEOUT, states.interest_settled())
        .await
        .is_err()
    {
        tracing::warn!(%client_id, "subscriptions not in effect in time; entries may arrive late");
    }
    let missed = match cursor {
        Some(cursor) => missed(ctx, user, cursor).await,
        None => Vec::new(),
    };
    ctx.router.backfill(client_id, missed).await?.await?;
    Ok(())
}

/// The seq `user`'s next inbox entry gets: where a new session's device starts.
async fn next_seq(ctx: &Context, user: &str) -> Option<u64> {
    let inbox = ctx.inbox.as_ref()?;
    match inbox.read(user, u64::MAX, 0).await {
        Ok((_, next)) => Some(next),
        Err(e) => {
            tracing::warn!(%user, "inbox log not read, the new session has no cursor: {e}");
            None
        }
    }
}

/// The entries of `user`'s inbox from seq `cursor` on, as its devices get them, at most a
/// durable queue's worth.
async fn missed(ctx: &Context, user: &str, cursor: u64) -> Vec<Message> {
    let Some(inbox) = &ctx.inbox else {
        return Vec::new();
    };
    let page = ctx.limits.sync_max_messages.max(1);
    let max = ctx.limits.session.max_queued_messages as usize;
    let mut missed = Vec::new();
    let mut from = cursor;
    while missed.len() < max {
        let (entries, next) = match inbox.read(user, from, page).await {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(%user, from, "inbox log not read for a resumed session: {e}");
                break;
            }
        };
        let read = entries.len();
        for entry in entries {
            from = entry.seq + 1;
            let copy = entry
                .message
                .and_then(|stored| for_recipient(&stored, user, entry.role, entry.seq));
            if let Some(copy) = copy {
                missed.push(copy);
            }
        }
        if read < page || from >= next {
            break;
        }
    }
    missed.truncate(max);
    missed
}
