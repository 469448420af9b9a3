//! A RocksDB write batch whose point writes reach each column family in key order.
//!
//! A memtable is a skip list that remembers where its last insert went: a key just after
//! the previous one is found in a few steps, a key elsewhere costs a search from the top,
//! a cache miss per level. The broker's batches interleave many users and clients (a DM
//! writes the message, two inbox entries and a queue entry, under four prefixes), so in
//! arrival order nearly every insert searched from the top. Sorting the point writes of a
//! batch by (column family, key) makes them sequential.
//!
//! Only independent writes may move: the sort is stable, so writes to one key keep their
//! order, and a range deletion is a barrier (the writes before it are applied before it,
//! those after it after it), since it covers keys the point writes may name.

use rocksdb::{ColumnFamily, WriteBatch};

enum Kind {
    Put(Vec<u8>),
    Delete,
    Merge(Vec<u8>),
}

struct Record<'a> {
    cf: &'a ColumnFamily,
    key: Vec<u8>,
    kind: Kind,
}

impl Record<'_> {
    /// The column family's identity within the batch (its handle's address).
    fn family(&self) -> usize {
        std::ptr::from_ref(self.cf) as usize
    }
}

/// Point writes held until the next range deletion or the end, then written sorted.
#[derive(Default)]
pub(crate) struct OrderedBatch<'a> {
    pending: Vec<Record<'a>>,
    batch: WriteBatch,
}

impl<'a> OrderedBatch<'a> {
    pub(crate) fn put_cf(
        &mut self,
        cf: &'a ColumnFamily,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) {
        self.push(cf, key, Kind::Put(value.into()));
    }

    pub(crate) fn delete_cf(&mut self, cf: &'a ColumnFamily, key: impl Into<Vec<u8>>) {
        self.push(cf, key, Kind::Delete);
    }

    pub(crate) fn merge_cf(
        &mut self,
        cf: &'a ColumnFamily,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) {
        self.push(cf, key, Kind::Merge(value.into()));
    }

    /// A barrier: what came before is written first.
    pub(crate) fn delete_range_cf(
        &mut self,
        cf: &'a ColumnFamily,
        begin: impl AsRef<[u8]>,
        end: impl AsRef<[u8]>,
    ) {
        self.flush();
        self.batch.delete_range_cf(cf, begin.as_ref(), end.as_ref());
    }

    pub(crate) fn finish(mut self) -> WriteBatch {
        self.flush();
        self.batch
    }

    /// Owned keys and values move in as they are (the callers build them for the batch).
    fn push(&mut self, cf: &'a ColumnFamily, key: impl Into<Vec<u8>>, kind: Kind) {
        self.pending.push(Record {
            cf,
            key: key.into(),
            kind,
        });
    }

    fn flush(&mut self) {
        // Stable: writes to the same key stay in their order.
        self.pending
            .sort_by(|a, b| (a.family(), &a.key).cmp(&(b.family(), &b.key)));
        for record in self.pending.drain(..) {
            match record.kind {
                Kind::Put(value) => self.batch.put_cf(record.cf, &record.key, value),
                Kind::Delete => self.batch.delete_cf(record.cf, &record.key),
                Kind::Merge(value) => self.batch.merge_cf(record.cf, &record.key, value),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rocksdb::{Options, DB};

    use super::*;

    #[test]
    fn point_writes_commute_but_a_range_deletion_keeps_its_place() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = DB::open_cf(&opts, dir.path(), ["a", "b"]).expect("open");
        let (a, b) = (db.cf_handle("a").expect("a"), db.cf_handle("b").expect("b"));
        let mut batch = OrderedBatch::default();
        batch.put_cf(b, "k2", "b2");
        batch.put_cf(a, "k9", "first");
        batch.put_cf(a, "k1", "a1");
        batch.delete_cf(a, "k9");
        batch.put_cf(a, "k9", "last");
        // Before the range deletion: deleted by it. After: kept.
        batch.put_cf(b, "r1", "gone");
        batch.delete_range_cf(b, "r0", "r9");
        batch.put_cf(b, "r2", "kept");
        db.write(batch.finish()).expect("write");
        let get = |cf, k: &str| {
            db.get_cf(cf, k)
                .expect("get")
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        };
        assert_eq!(get(a, "k9").as_deref(), Some("last"));
        assert_eq!(get(a, "k1").as_deref(), Some("a1"));
        assert_eq!(get(b, "k2").as_deref(), Some("b2"));
        assert_eq!(get(b, "r1"), None);
        assert_eq!(get(b, "r2").as_deref(), Some("kept"));
    }
}
