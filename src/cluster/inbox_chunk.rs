//! The payload of one JetStream message in a user's inbox log: several consecutive
//! entries of that log, appended at once. One message per entry would cost the NATS
//! servers a replicated write, a republish and an acknowledgement per entry; entries
//! that queue up for one user while its previous append is in flight go together.
//!
//! Each entry is its user's role, its dedupe id and the stored chat message:
//! `role: u8, id length: u16 BE, id, record length: u32 BE, record`; the id is empty for
//! a message sent without a client `msgid` (never a resend). The message's headers say
//! the seq of the first entry and how many there are.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest dedupe id an entry carries (ids are sender, msgid and recipient).
pub(super) const MAX_ID: usize = u16::MAX as usize;

/// One entry of a chunk, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ChunkEntry {
    pub role: u8,
    pub id: Bytes,
    pub record: Bytes,
}

/// Bytes one entry takes in a chunk.
pub(super) fn entry_len(id: &str, record: &Bytes) -> usize {
    1 + 2 + id.len() + 4 + record.len()
}

/// Appends one entry to a chunk being built. `id` is at most [`MAX_ID`] bytes, the
/// record under 4 GiB (the appender refuses larger ones before they get here).
pub(super) fn put_entry(chunk: &mut BytesMut, role: u8, id: &str, record: &Bytes) {
    let id = &id.as_bytes()[..id.len().min(MAX_ID)];
    chunk.reserve(1 + 2 + id.len() + 4 + record.len());
    chunk.put_u8(role);
    chunk.put_u16(id.len() as u16);
    chunk.put_slice(id);
    chunk.put_u32(u32::try_from(record.len()).unwrap_or(u32::MAX));
    chunk.put_slice(record);
}

/// The entries of a chunk, in order, or what is wrong with it.
pub(super) fn entries(mut chunk: Bytes) -> Result<Vec<ChunkEntry>, String> {
    let mut entries = Vec::new();
    while chunk.has_remaining() {
        if chunk.remaining() < 3 {
            return Err(format!("entry {} cut short in its header", entries.len()));
        }
        let role = chunk.get_u8();
        let id_len = usize::from(chunk.get_u16());
        if chunk.remaining() < id_len + 4 {
            return Err(format!("entry {} cut short in its id", entries.len()));
        }
        let id = chunk.split_to(id_len);
        let record_len = chunk.get_u32() as usize;
        if chunk.remaining() < record_len {
            return Err(format!(
                "entry {} says {record_len} bytes, {} left",
                entries.len(),
                chunk.remaining()
            ));
        }
        let record = chunk.split_to(record_len);
        entries.push(ChunkEntry { role, id, record });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_back_as_they_went_in() {
        let mut chunk = BytesMut::new();
        let (a, b) = (Bytes::from_static(b"first"), Bytes::new());
        put_entry(&mut chunk, 1, "5:alice2:m1bob", &a);
        put_entry(&mut chunk, 2, "", &b);
        assert_eq!(
            chunk.len(),
            entry_len("5:alice2:m1bob", &a) + entry_len("", &b)
        );
        let read = entries(chunk.freeze()).expect("a whole chunk");
        assert_eq!(
            read,
            vec![
                ChunkEntry {
                    role: 1,
                    id: Bytes::from_static(b"5:alice2:m1bob"),
                    record: a,
                },
                ChunkEntry {
                    role: 2,
                    id: Bytes::new(),
                    record: b,
                },
            ]
        );
    }

    #[test]
    fn a_cut_chunk_is_an_error_not_a_panic() {
        let mut chunk = BytesMut::new();
        put_entry(&mut chunk, 1, "id", &Bytes::from_static(b"record"));
        let whole = chunk.freeze();
        for cut in 1..whole.len() {
            assert!(entries(whole.slice(..cut)).is_err(), "cut at {cut}");
        }
        assert!(entries(Bytes::new()).expect("empty").is_empty());
    }
}
