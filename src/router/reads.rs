//! Read marks through the router: the marks are raised in storage (a merge: they only
//! rise), and the notices go to the devices connected now, at QoS 0: a device away learns
//! the marks from its next `$sync` (see `im::reads`).

use std::sync::Arc;

use tern_codec::QoS;
use tern_storage::{Mark, Op};

use super::core::{Outcome, Router};
use super::routing::Payload;
use crate::im::reads::notice;
use crate::im::topics::receipt_mark;

/// A read mark to raise: the reader's, and for a DM with receipts on, the peer's receipt.
pub(crate) struct ReadReport {
    pub(crate) reader: String,
    /// `read/dm/{peer}` or `read/group/{gid}`.
    pub(crate) name: String,
    pub(crate) mark: Mark,
    /// The DM peer who learns the position (receipts on).
    pub(crate) receipt_to: Option<String>,
}

impl Router {
    pub(crate) fn raise_read_mark(&mut self, report: ReadReport, out: &mut Outcome) {
        let ReadReport {
            reader,
            name,
            mark,
            receipt_to,
        } = report;
        if let Some(peer) = receipt_to {
            let receipt = receipt_mark(&reader);
            self.notify_mark(&peer, &receipt, &mark, out);
            out.ops.push(Op::RaiseMark {
                user: peer,
                name: receipt,
                mark,
            });
        }
        self.notify_mark(&reader, &name, &mark, out);
        out.ops.push(Op::RaiseMark {
            user: reader,
            name,
            mark,
        });
    }

    fn notify_mark(&mut self, user: &str, name: &str, mark: &Mark, out: &mut Outcome) {
        let message = Arc::new(notice(user, name, mark, QoS::AtMostOnce));
        self.deliver_to_subscribers(&message, Payload::Copied, out);
    }
}
