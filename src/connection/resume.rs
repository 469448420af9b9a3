//! A CONNECT on a cluster node, as the cluster's copy of persistent sessions sees it (see
//! `cluster/session_state.rs`): a clean start voids the copy; a resume of a session this
//! node does not hold (it was on a node that died, or on another node since) makes the
//! copy this node's session, with what its device missed (inbox entries, and kept QoS > 0
//! messages its filters match) queued ahead of what arrives live (`router/adopt.rs`).
//! Either way the connection's claim is handed to the cluster's writer, which keeps the
//! copy and the device's cursors from then on.

use std::time::Duration;

use arcstr::ArcStr;
use tern_storage::StoredSession;

use super::{ConnectionError, Context};
use crate::cluster::SessionStates;
use crate::im::inbox::for_recipient;
use crate::protocol::Message;
use crate::router::{Cursors, SessionChange};

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
    let attached = |born, fresh, cursors| SessionChange::Attached {
        client_id: client_id.clone(),
        revision,
        born,
        fresh,
        cursors,
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
    // A copy whose session expired is void, like a clean start's.
    let expired = found
        .as_ref()
        .is_some_and(|found| ended(&found.record.session));
    let Some(found) = found.filter(|_| !expired) else {
        // A new session: its device has nothing of the logs yet.
        let cursors = if persistent {
            starting_cursors(ctx, states, user).await
        } else {
            Cursors::default()
        };
        states.change(attached(revision, clean_start || expired, cursors));
        return Ok(());
    };
    let cursors = found.cursors;
    states.change(attached(found.record.born, false, cursors));
    let held_elsewhere = found.record.node != states.node();
    let session = found.record.session;
    if !ctx.router.adopt(session.clone(), held_elsewhere).await? {
        return Ok(());
    }
    tracing::info!(%client_id, %user, from = %found.record.node, ?cursors, "session resumed from the cluster's copy");
    // What the logs publish from here on reaches the session; what they held before is
    // read below.
    if tokio::time::timeout(STEP_TIMEOUT, states.interest_settled())
        .await
        .is_err()
    {
        tracing::warn!(%client_id, "subscriptions not in effect in time; messages may arrive late");
    }
    let (missed, covered) = missed(ctx, states, user, &session, cursors).await;
    ctx.router
        .backfill(client_id, missed, covered)
        .await?
        .await?;
    Ok(())
}

/// Whether `session`'s expiry passed since it went offline. A session whose node died
/// while it was connected has no disconnect time: it is taken as not expired.
fn ended(session: &StoredSession) -> bool {
    let Some(disconnected_at) = session.disconnected_at_ms else {
        return false;
    };
    session.expiry_interval_secs != u32::MAX
        && crate::protocol::now_ms()
            >= disconnected_at.saturating_add(u64::from(session.expiry_interval_secs) * 1000)
}

/// Where a new session's device starts: after everything the logs hold now.
async fn starting_cursors(ctx: &Context, states: &SessionStates, user: &str) -> Cursors {
    let inbox = async {
        match ctx.inbox.as_ref()?.read(user, u64::MAX, 0).await {
            Ok((_, next)) => Some(next),
            Err(e) => {
                tracing::warn!(%user, "inbox log not read, the new session has no cursor in it: {e}");
                None
            }
        }
    };
    let messages = async {
        match states.messages_next().await {
            Ok(next) => Some(next),
            Err(e) => {
                tracing::warn!(%user, "message stream not read, the new session has no cursor in it: {e}");
                None
            }
        }
    };
    let (inbox, messages) = tokio::join!(inbox, messages);
    Cursors { inbox, messages }
}

/// What the device of `session` missed since `cursors`, at most a durable queue's worth:
/// its user's inbox entries, then the kept messages its filters match; and how far the
/// reads reached (what routing brings later the device has not got).
async fn missed(
    ctx: &Context,
    states: &SessionStates,
    user: &str,
    session: &StoredSession,
    cursors: Cursors,
) -> (Vec<Message>, Cursors) {
    let max = ctx.limits.session.max_queued_messages as usize;
    let mut covered = Cursors::default();
    let mut missed = Vec::new();
    if let (Some(inbox), Some(from)) = (&ctx.inbox, cursors.inbox) {
        let page = ctx.limits.sync_max_messages.max(1);
        let mut from = from;
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
                missed.extend(copy);
            }
            if read < page || from >= next {
                break;
            }
        }
        covered.inbox = Some(from);
    }
    if let Some(from) = cursors.messages {
        let room = max.saturating_sub(missed.len());
        match states.missed_messages(session, from, room).await {
            Ok((messages, until)) => {
                missed.extend(messages);
                covered.messages = Some(until);
            }
            Err(e) => {
                tracing::warn!(client_id = %session.client_id, from, "message stream not read for a resumed session: {e}")
            }
        }
    }
    (missed, covered)
}
