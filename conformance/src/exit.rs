//! RocksDB aborts the process ("pthread lock: Invalid argument") if it exits while a
//! database is still being closed: its static objects are destroyed under the closing
//! thread. A broker a test did not stop is exactly that: the test's runtime drops it, and
//! its storage writer thread closes the database in the background, racing the end of the
//! test binary. Each in-process broker's database is counted while open, and an exit hook
//! (`atexit`, which runs before the C++ static destructors registered earlier) waits for
//! the count to reach zero.

use std::sync::{Condvar, Mutex, Once};
use std::time::{Duration, Instant};

static OPEN: Mutex<usize> = Mutex::new(0);
static CLOSED: Condvar = Condvar::new();
static HOOK: Once = Once::new();

/// How long the exit hook waits for databases still closing.
const EXIT_WAIT: Duration = Duration::from_secs(30);

/// One open database; dropping it says that it is closed.
pub struct OpenDatabase(());

/// Counts a database as open until the returned value is dropped.
pub fn opened() -> OpenDatabase {
    HOOK.call_once(|| {
        // SAFETY: registers a plain `extern "C" fn()` with no preconditions.
        unsafe {
            libc::atexit(wait_for_closes);
        }
    });
    *OPEN.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    OpenDatabase(())
}

impl Drop for OpenDatabase {
    fn drop(&mut self) {
        let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        *open -= 1;
        CLOSED.notify_all();
    }
}

extern "C" fn wait_for_closes() {
    let deadline = Instant::now() + EXIT_WAIT;
    let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
    while *open > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        open = CLOSED
            .wait_timeout(open, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}
