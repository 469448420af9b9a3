//! The cursor file: the last inbox seq this device handled, so that a restarted app asks
//! `$sync` from there instead of from the start of the log. It holds the user id and the
//! seq (`{"user":"alice","last":57}`), nothing secret. Writes are atomic (a temporary file
//! beside it, flushed to disk, then renamed over it), so a crash leaves the old cursor or
//! the new one, never half of one.
//!
//! A file that does not parse, or that belongs to another user, is an error naming the file
//! rather than a fresh start: starting fresh would replay the user's whole log as if it
//! were new (or, with another user's seq, skip messages). The app decides: delete the file
//! and connect again, or fix the path.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The cursor file could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cursor file {}: {reason}", path.display())]
pub struct CursorError {
    pub path: PathBuf,
    pub reason: String,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    user: String,
    last: Option<u64>,
}

/// One user's cursor file.
#[derive(Debug, Clone)]
pub struct CursorFile {
    path: PathBuf,
    user: String,
}

impl CursorFile {
    pub fn new(path: impl Into<PathBuf>, user: impl Into<String>) -> Self {
        CursorFile {
            path: path.into(),
            user: user.into(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored seq; `None` when the file does not exist yet (or stores none).
    pub fn load(&self) -> Result<Option<u64>, CursorError> {
        let text = match fs::read(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.error(format!("cannot be read: {e}"))),
        };
        let stored: Stored = serde_json::from_slice(&text).map_err(|e| {
            self.error(format!(
                "is not a cursor ({e}); delete it to sync the whole log again"
            ))
        })?;
        if stored.user != self.user {
            return Err(self.error(format!(
                "belongs to user `{}`, not `{}`",
                stored.user, self.user
            )));
        }
        Ok(stored.last)
    }

    /// Replaces the file with `last`, atomically. Blocking: the driver runs it on tokio's
    /// blocking pool.
    pub fn store(&self, last: Option<u64>) -> Result<(), CursorError> {
        let Some(name) = self.path.file_name() else {
            return Err(self.error("names no file".into()));
        };
        let mut tmp_name = name.to_os_string();
        tmp_name.push(".tmp");
        let tmp = self.path.with_file_name(tmp_name);
        let body = serde_json::to_vec(&Stored {
            user: self.user.clone(),
            last,
        })
        .map_err(|e| self.error(format!("cannot be encoded: {e}")))?;
        let write = || -> std::io::Result<()> {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(&body)?;
            file.write_all(b"\n")?;
            // On disk before the rename makes it the cursor.
            file.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            // The rename itself reaches the disk with the directory; best effort (not
            // every platform lets a directory be opened).
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                if let Ok(dir) = fs::File::open(dir) {
                    let _ = dir.sync_all();
                }
            }
            Ok(())
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            self.error(format!("cannot be written: {e}"))
        })
    }

    fn error(&self, reason: String) -> CursorError {
        CursorError {
            path: self.path.clone(),
            reason,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh directory under the system's temporary one, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new() -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "tern-client-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&dir).expect("a temporary directory");
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_missing_file_is_no_cursor() {
        let dir = TempDir::new();
        let cursor = CursorFile::new(dir.0.join("cursor.json"), "alice");
        assert_eq!(cursor.load(), Ok(None));
    }

    #[test]
    fn what_is_stored_is_loaded_and_nothing_is_left_beside_it() {
        let dir = TempDir::new();
        let cursor = CursorFile::new(dir.0.join("cursor.json"), "alice");
        cursor.store(Some(57)).expect("stored");
        assert_eq!(cursor.load(), Ok(Some(57)));
        cursor.store(Some(58)).expect("replaced");
        assert_eq!(cursor.load(), Ok(Some(58)));
        cursor.store(None).expect("stored");
        assert_eq!(cursor.load(), Ok(None));
        let names: Vec<_> = fs::read_dir(&dir.0)
            .expect("listed")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("cursor.json")]);
        let text = fs::read_to_string(dir.0.join("cursor.json")).expect("read");
        assert_eq!(text, "{\"user\":\"alice\",\"last\":null}\n");
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = TempDir::new();
        let path = dir.0.join("cursor.json");
        for junk in [
            &b"{\"user\":\"alice\",\"last\":"[..],
            b"57",
            b"\xff\xfe",
            b"",
        ] {
            fs::write(&path, junk).expect("written");
            let err = CursorFile::new(&path, "alice").load().expect_err("corrupt");
            assert_eq!(err.path, path);
            assert!(err.to_string().contains("cursor.json"), "{err}");
        }
    }

    #[test]
    fn another_users_cursor_is_refused() {
        let dir = TempDir::new();
        let path = dir.0.join("cursor.json");
        CursorFile::new(&path, "bob")
            .store(Some(3))
            .expect("stored");
        let err = CursorFile::new(&path, "alice")
            .load()
            .expect_err("not mine");
        assert!(err.reason.contains("`bob`"), "{err}");
    }

    #[test]
    fn an_unwritable_place_is_an_error_not_a_panic() {
        let dir = TempDir::new();
        let cursor = CursorFile::new(dir.0.join("missing-dir").join("cursor.json"), "alice");
        let err = cursor.store(Some(1)).expect_err("no such directory");
        assert!(err.reason.contains("cannot be written"), "{err}");
        let err = CursorFile::new("/", "alice")
            .store(Some(1))
            .expect_err("no file name");
        assert!(err.reason.contains("names no file"), "{err}");
    }
}
