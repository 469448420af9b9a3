//! The admin API's bearer token and the two files through which the CLI finds a running
//! broker's API: `{data_dir}/admin.token` and `{data_dir}/admin.addr`.
//!
//! - `admin.token`: written (mode 0600) only when `admin.token` is empty in config and the
//!   broker generated a random token at start (32 random bytes, hex). A configured token is
//!   never written to disk; a stale generated one is removed at start.
//! - `admin.addr`: the address the API is bound to (the real port when the config said 0).
//! - `admin.key`: a lasting token `tern init` wrote (mode 0600). With `admin.token` empty
//!   in config, the broker uses it at every start instead of generating one (and writes it
//!   to `admin.token` too, as a generated one). Never removed by the broker.
//!
//! Both are written atomically (temporary file, then rename) and removed when the broker
//! stops cleanly. After a crash they stay behind; the CLI then finds nobody answering at the
//! address and falls back to the data directory.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use argon2::password_hash::rand_core::{OsRng, RngCore};

/// File name of the generated token in the data directory.
pub const TOKEN_FILE: &str = "admin.token";
/// File name of the API's bound address in the data directory.
pub const ADDR_FILE: &str = "admin.addr";
/// File name of the lasting token `tern init` writes: the broker's token at every start
/// while `[admin] token` is empty (instead of a new random one each time).
pub const KEY_FILE: &str = "admin.key";

/// A new random token: 32 bytes from the OS, as 64 hex digits.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `given` is `expected`, in time independent of where they differ.
pub fn matches(given: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    // Length is not secret (the generated token's length is documented); the contents are.
    given.len() == expected.len() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// `{dir}/admin.token`.
pub fn token_path(dir: &Path) -> PathBuf {
    dir.join(TOKEN_FILE)
}

/// `{dir}/admin.key`.
pub fn key_path(dir: &Path) -> PathBuf {
    dir.join(KEY_FILE)
}

/// Reads the lasting token `tern init` wrote; `None` if there is none.
pub fn read_key(dir: &Path) -> std::io::Result<Option<String>> {
    read_trimmed(&key_path(dir))
}

/// `{dir}/admin.addr`.
pub fn addr_path(dir: &Path) -> PathBuf {
    dir.join(ADDR_FILE)
}

/// Writes `contents` to `path` atomically, readable and writable by the owner only.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// Reads the generated token from a data directory; `None` if there is none.
pub fn read_token(dir: &Path) -> std::io::Result<Option<String>> {
    read_trimmed(&token_path(dir))
}

fn read_trimmed(path: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_string()).filter(|t| !t.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads the address a running broker's API is bound to; `None` if the file is absent.
pub fn read_addr(dir: &Path) -> Result<Option<SocketAddr>, String> {
    let path = addr_path(dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| format!("{}: not an address ({e})", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Removes a file, ignoring that it is already gone; other errors are logged.
pub fn remove_quietly(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("cannot remove {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex() {
        let a = generate();
        let b = generate();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(matches(&a, &a.clone()));
        assert!(!matches(&a, &b));
        assert!(!matches("", &a));
        assert!(!matches(&a[..63], &a));
    }

    #[test]
    fn files_are_private_and_read_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(read_token(dir.path()).expect("read"), None);
        assert_eq!(read_addr(dir.path()), Ok(None));
        write_private(&token_path(dir.path()), "abc\n").expect("write");
        write_private(&addr_path(dir.path()), "127.0.0.1:9\n").expect("write");
        assert_eq!(
            read_token(dir.path()).expect("read").as_deref(),
            Some("abc")
        );
        assert_eq!(
            read_addr(dir.path()),
            Ok(Some("127.0.0.1:9".parse().expect("addr")))
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(token_path(dir.path()))
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        remove_quietly(&token_path(dir.path()));
        remove_quietly(&token_path(dir.path()));
        assert_eq!(read_token(dir.path()).expect("read"), None);
    }
}
