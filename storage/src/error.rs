//! The error type of every storage operation.
//!
//! It is `Clone` because the [`Writer`](crate::Writer) hands the error of one failed group
//! write to every waiter of that group (`rocksdb::Error` is a cloneable message string).

use std::path::PathBuf;

/// Why a storage operation failed, with enough context (operation, column family, key or
/// path) to act on it from a log line.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// RocksDB failed; `context` says what we were doing.
    #[error("rocksdb error while {context}: {source}")]
    Rocks {
        context: String,
        #[source]
        source: rocksdb::Error,
    },
    /// The directory's lock is held: another process (or another store in this one) has the
    /// database open.
    #[error(
        "storage directory {} is locked: another broker (or store) has it open: {source}",
        path.display()
    )]
    Locked {
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },
    /// A stored key or value does not decode; `what` names it.
    #[error("corrupt storage data: {what}")]
    Corrupt { what: String },
    /// The directory holds data in a format this build does not read.
    #[error(
        "storage directory {} holds data format version {found}, this build reads version {supported}",
        path.display()
    )]
    UnsupportedFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    /// An op (or a lookup) that cannot be stored, e.g. a client id over 65,535 bytes. Rejected
    /// before anything was written.
    #[error("invalid storage operation: {what}")]
    Invalid { what: String },
    /// A write to a store opened with [`RocksStore::open_read_only`](crate::RocksStore::open_read_only).
    #[error("the store is open read-only")]
    ReadOnly,
    /// The [`Writer`](crate::Writer) has been shut down.
    #[error("the storage writer is shut down")]
    Closed,
    /// A write kept elsewhere than this store (a cluster's replicated log) failed; `what`
    /// says where and why.
    #[error("not stored: {what}")]
    Elsewhere { what: String },
}

impl StorageError {
    pub(crate) fn rocks(context: impl Into<String>, source: rocksdb::Error) -> StorageError {
        StorageError::Rocks {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>) -> StorageError {
        StorageError::Corrupt { what: what.into() }
    }

    pub(crate) fn invalid(what: impl Into<String>) -> StorageError {
        StorageError::Invalid { what: what.into() }
    }
}
