//! The outbound in-flight window: messages sent to a client at QoS > 0 and not yet
//! acknowledged, by packet ID.
//!
//! Packet IDs are handed out consecutively (1 to 65535, then 1 again) and a client
//! acknowledges in the order it received [MQTT-4.6.0-2], so the window is a ring of slots
//! indexed by an ID's distance from the oldest unacknowledged one. Handing out an ID, finding
//! the entry an acknowledgement names and removing it are index arithmetic, no hashing, and
//! the slots are reused without allocating once the ring has grown to the window's size.
//! This is on the path of every QoS 1 and 2 delivery (a hash map here was 5-7% of the
//! broker's CPU in the 1,000-subscriber QoS 1 fan-out).
//!
//! An acknowledgement out of order (a QoS 2 message waiting for PUBCOMP while later QoS 1
//! ones are acknowledged, or a client breaking the ordering rule) leaves a hole, reclaimed
//! when everything before it is gone. [`InFlightWindow::span`] counts holes too: the
//! session bounds it, which bounds the memory a client that never acknowledges its oldest
//! message can make us hold.

use std::collections::VecDeque;

/// Packet IDs there are (0 is not one).
const IDS: usize = u16::MAX as usize;

/// Entries of type `T` under consecutive packet IDs.
#[derive(Debug)]
pub(crate) struct InFlightWindow<T> {
    /// `slots[i]` is the entry of packet ID `first_id + i` (wrapping past 65535 to 1);
    /// `None` once acknowledged out of order. Never starts with `None`.
    slots: VecDeque<Option<T>>,
    /// The packet ID of `slots[0]`; while the window is empty, the next ID to hand out.
    first_id: u16,
    /// Entries present (slots that are not holes).
    len: usize,
}

impl<T> Default for InFlightWindow<T> {
    fn default() -> Self {
        InFlightWindow {
            slots: VecDeque::new(),
            first_id: 1,
            len: 0,
        }
    }
}

/// `id` moved on by `by` in the packet ID space, where 65535 is followed by 1.
fn advance(id: u16, by: usize) -> u16 {
    let zero_based = (usize::from(id) - 1 + by) % IDS;
    // zero_based < 65535, so the sum fits.
    (zero_based + 1) as u16
}

impl<T> InFlightWindow<T> {
    /// Entries waiting for an acknowledgement.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Consecutive packet IDs from the oldest entry to the newest, holes included.
    pub(crate) fn span(&self) -> usize {
        self.slots.len()
    }

    /// The packet ID the next [`push`](Self::push) takes; `None` when every ID is in use.
    pub(crate) fn next_id(&self) -> Option<u16> {
        (self.slots.len() < IDS).then(|| advance(self.first_id, self.slots.len()))
    }

    /// Adds an entry under the next packet ID, which it returns; `None` (and nothing added)
    /// when every ID is in use.
    pub(crate) fn push(&mut self, entry: T) -> Option<u16> {
        let id = self.next_id()?;
        self.slots.push_back(Some(entry));
        self.len += 1;
        Some(id)
    }

    fn index(&self, id: u16) -> Option<usize> {
        if id == 0 {
            return None;
        }
        let distance = (usize::from(id) + IDS - usize::from(self.first_id)) % IDS;
        (distance < self.slots.len()).then_some(distance)
    }

    pub(crate) fn get(&self, id: u16) -> Option<&T> {
        self.slots.get(self.index(id)?)?.as_ref()
    }

    pub(crate) fn get_mut(&mut self, id: u16) -> Option<&mut T> {
        let index = self.index(id)?;
        self.slots.get_mut(index)?.as_mut()
    }

    /// Takes the entry under `id` out of the window.
    pub(crate) fn remove(&mut self, id: u16) -> Option<T> {
        let index = self.index(id)?;
        let entry = self.slots.get_mut(index)?.take()?;
        self.len -= 1;
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.first_id = advance(self.first_id, 1);
        }
        Some(entry)
    }

    /// The entries, oldest first.
    pub(crate) fn values(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().flatten()
    }

    /// Frees the ring's memory when nothing is in flight (an idle connection keeps none).
    pub(crate) fn shrink_when_empty(&mut self) {
        if self.len == 0 {
            self.slots = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn ids_are_consecutive_and_wrap_past_65535_to_1() {
        let mut w = InFlightWindow {
            first_id: 65534,
            ..InFlightWindow::default()
        };
        assert_eq!(w.push('a'), Some(65534));
        assert_eq!(w.push('b'), Some(65535));
        assert_eq!(w.push('c'), Some(1));
        assert_eq!(w.get(0), None);
        assert_eq!(w.get(1), Some(&'c'));
        assert_eq!(w.remove(65534), Some('a'));
        assert_eq!(w.remove(65535), Some('b'));
        assert_eq!(w.remove(1), Some('c'));
        assert_eq!(w.len(), 0);
        // Empty again: IDs go on from where they were, not back to an acknowledged one.
        assert_eq!(w.push('d'), Some(2));
    }

    #[test]
    fn a_hole_is_reclaimed_once_the_oldest_goes() {
        let mut w = InFlightWindow::default();
        for c in ['a', 'b', 'c'] {
            w.push(c);
        }
        assert_eq!(w.remove(2), Some('b'));
        assert_eq!((w.len(), w.span()), (2, 3));
        assert_eq!(w.remove(2), None, "removed twice");
        assert_eq!(w.remove(1), Some('a'));
        assert_eq!((w.len(), w.span()), (1, 1));
        assert_eq!(w.values().collect::<Vec<_>>(), [&'c']);
    }

    #[test]
    fn every_id_in_use_refuses_more() {
        let mut w = InFlightWindow::default();
        for i in 0..IDS {
            assert!(w.push(i).is_some());
        }
        assert_eq!(w.next_id(), None);
        assert_eq!(w.push(0), None);
        assert_eq!(w.len(), IDS);
        // Each ID names exactly one entry.
        assert_eq!(w.get(1), Some(&0));
        assert_eq!(w.get(65535), Some(&(IDS - 1)));
        assert_eq!(w.remove(1), Some(0));
        assert_eq!(w.push(7), Some(1));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push,
        Remove(u16),
        /// Removes the oldest entry (the usual in-order acknowledgement).
        RemoveOldest,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Push),
            1 => (0u16..8).prop_map(Op::Remove),
            3 => Just(Op::RemoveOldest),
        ]
    }

    proptest! {
        /// Agrees with a map from packet ID to entry, starting anywhere in the ID space.
        #[test]
        fn behaves_like_a_map_of_ids(start in 1u16.., ops in proptest::collection::vec(op(), 0..200)) {
            let mut w = InFlightWindow {
                first_id: start,
                ..InFlightWindow::default()
            };
            let mut model: BTreeMap<u16, u32> = BTreeMap::new();
            let mut order: VecDeque<u16> = VecDeque::new();
            for (n, op) in ops.into_iter().enumerate() {
                let n = n as u32;
                match op {
                    Op::Push => {
                        let id = w.push(n).expect("far from 65535 entries");
                        prop_assert!(!model.contains_key(&id), "ID {} handed out twice", id);
                        prop_assert_ne!(id, 0);
                        model.insert(id, n);
                        order.push_back(id);
                    }
                    Op::Remove(back) => {
                        // An ID near the newest, present or not.
                        let id = advance(w.next_id().unwrap_or(1), IDS - 1 - usize::from(back));
                        prop_assert_eq!(w.remove(id), model.remove(&id));
                        order.retain(|&o| o != id);
                    }
                    Op::RemoveOldest => {
                        if let Some(id) = order.pop_front() {
                            prop_assert_eq!(w.remove(id), model.remove(&id));
                        }
                    }
                }
                prop_assert_eq!(w.len(), model.len());
                for (&id, entry) in &model {
                    prop_assert_eq!(w.get(id), Some(entry));
                }
                let in_order: Vec<u32> = order.iter().map(|id| model[id]).collect();
                prop_assert_eq!(w.values().copied().collect::<Vec<_>>(), in_order);
                prop_assert!(w.span() >= w.len());
                prop_assert!(w.slots.front().is_none_or(Option::is_some));
            }
        }
    }
}
