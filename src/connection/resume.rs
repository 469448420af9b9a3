//! A CONNECT on a cluster node, as the cluster's copy of persistent sessions sees it (see
//! `cluster/session_state.rs`): a clean start voids the copy; a resume of a session this
//! node does not hold (it was on a node that died, or on another node since) makes the
//! copy this node's session, with what its device missed (inbox entries, and kept QoS > 0
//! messages its filters match) queued ahead of what arrives live (`router/adopt.rs`).
//! Either way the connection's claim is handed to the cluster's writer, which keeps the
//! copy and the device's cursors from then on.

use std::time::Duration;

use arcstr::ArcStr;
use tern_codec::ReasonCode;
use tern_storage::StoredSession;

use super::{ConnectionError, Context};
use crate::cluster::SessionStates;
use crate::protocol::Message;
use crate::router::{Covered, Cursors, SessionChange};

/// How long the cluster's copy is read for, and the adopted session's subscriptions are
/// waited on to take effect in NATS, before the CONNECT goes on without.
const STEP_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a resume waits for this node's appends to the message stream made before it
/// (they are retried for `cluster.append_timeout_ms`, 10 s by default).
const APPENDS_TIMEOUT: Duration = Duration::from_secs(10);

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
/// `Ok(Err(code))` refuses the CONNECT: what the device missed could not be read (the
/// session stays in the cluster's copy for its next attempt).
pub(super) async fn prepare(
    ctx: &Context,
    states: &SessionStates,
    resume: Resume<'_>,
) -> Result<Result<(), ReasonCode>, ConnectionError> {
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
    // Without the cluster's copy (or, for a new session, where the logs end) the CONNECT
    // is refused rather than served a session that would lose what the copy holds.
    let found = if clean_start {
        None
    } else {
        match attempts(|| states.load(client_id)).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(%client_id, "CONNECT refused: the cluster's copy of the session: {e}");
                return Ok(Err(ReasonCode::ServerUnavailable));
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
            match starting_cursors(ctx, states, user).await {
                Ok(cursors) => cursors,
                Err(e) => {
                    tracing::warn!(%client_id, "CONNECT refused: where the logs end: {e}");
                    return Ok(Err(ReasonCode::ServerUnavailable));
                }
            }
        } else {
            Cursors::default()
        };
        states.change(attached(revision, clean_start || expired, cursors));
        return Ok(Ok(()));
    };
    let cursors = found.cursors;
    // Handed to the writer once the session is this node's: until then, the router's
    // changes to it (an abandoned adoption's end) are not the cluster's.
    let resumed = attached(found.record.born, false, cursors);
    let held_elsewhere = found.record.node != states.node();
    let session = found.record.session;
    let Some(appends_before) = ctx.router.adopt(session.clone(), held_elsewhere).await? else {
        states.change(resumed);
        return Ok(Ok(()));
    };
    tracing::info!(%client_id, %user, from = %found.record.node, ?cursors, "session resumed from the cluster's copy");
    // What the logs publish from here on reaches the session; what they held before is
    // read below.
    if tokio::time::timeout(STEP_TIMEOUT, states.interest_settled())
        .await
        .is_err()
    {
        tracing::warn!(%client_id, "subscriptions not in effect in time; messages may arrive late");
    }
    // A message routed here before the adoption is not held for the session: it must be
    // in the stream when the read below looks at the stream's end.
    if !appends_before.over(APPENDS_TIMEOUT).await {
        tracing::warn!(%client_id, "CONNECT refused: this node's appends before the resume did not end in time");
        ctx.router.abandon(client_id).await?;
        return Ok(Err(ReasonCode::ServerUnavailable));
    }
    let (missed, covered) = match missed(ctx, states, user, &session, cursors).await {
        Ok(read) => read,
        Err(e) => {
            tracing::warn!(%client_id, %user, "CONNECT refused: what the session missed could not be read: {e}");
            ctx.router.abandon(client_id).await?;
            return Ok(Err(ReasonCode::ServerUnavailable));
        }
    };
    states.change(resumed);
    ctx.router
        .backfill(client_id, missed, covered)
        .await?
        .await?;
    if held_elsewhere {
        states.tell_moved(&found.record.node, client_id).await;
    }
    Ok(Ok(()))
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
async fn starting_cursors(
    ctx: &Context,
    states: &SessionStates,
    user: &str,
) -> Result<Cursors, String> {
    let inbox = async {
        match &ctx.inbox {
            Some(inbox) => attempts(|| inbox.read(user, u64::MAX, 0))
                .await
                .map(|(_, next)| Some(next))
                .map_err(|e| format!("the inbox log of {user}: {e}")),
            None => Ok(None),
        }
    };
    let messages = async {
        attempts(|| states.messages_next())
            .await
            .map_err(|e| format!("the message stream: {e}"))
    };
    let (inbox, messages) = tokio::join!(inbox, messages);
    Ok(Cursors {
        inbox: inbox?,
        messages: Some(messages?),
    })
}

/// What the device of `session` missed since `cursors`, at most a durable queue's worth:
/// its user's inbox entries, then the kept messages its filters match; and what the reads
/// covered (how far they reached: what routing brings later the device has not got; and
/// which of this node's own appends they returned). Each read is tried [`READ_ATTEMPTS`]
/// times.
async fn missed(
    ctx: &Context,
    states: &SessionStates,
    user: &str,
    session: &StoredSession,
    cursors: Cursors,
) -> Result<(Vec<Message>, Covered), String> {
    let max = ctx.limits.session.max_queued_messages as usize;
    let mut covered = Covered::default();
    let mut missed = Vec::new();
    if let (Some(inbox), Some(from)) = (&ctx.inbox, cursors.inbox) {
        let page = ctx.limits.sync_max_messages.max(1);
        let mut from = from;
        while missed.len() < max {
            let (entries, next) = attempts(|| inbox.read(user, from, page))
                .await
                .map_err(|e| format!("the inbox log of {user} from {from}: {e}"))?;
            let read = entries.len();
            for entry in entries {
                from = entry.seq + 1;
                missed.extend(entry.copy_for(user));
            }
            if read < page || from >= next {
                break;
            }
        }
        covered.cursors.inbox = Some(from);
    }
    if let Some(from) = cursors.messages {
        let room = max.saturating_sub(missed.len());
        let read = attempts(|| states.missed_messages(session, from, room))
            .await
            .map_err(|e| format!("the message stream from {from}: {e}"))?;
        missed.extend(read.messages);
        covered.cursors.messages = Some(read.until);
        covered.appended_here = read.appended_here;
    }
    Ok((missed, covered))
}

/// Reads tried before the CONNECT is refused.
const READ_ATTEMPTS: usize = 3;

/// `read`, tried up to [`READ_ATTEMPTS`] times, each within [`STEP_TIMEOUT`].
async fn attempts<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    mut read: impl FnMut() -> F,
) -> Result<T, String> {
    let mut why = String::new();
    for _ in 0..READ_ATTEMPTS {
        match tokio::time::timeout(STEP_TIMEOUT, read()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => why = e.to_string(),
            Err(_) => why = format!("no answer within {STEP_TIMEOUT:?}"),
        }
    }
    Err(why)
}
