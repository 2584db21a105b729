//! Who is connected and what they run: the backends of a server's PostgreSQL
//! connections and its running Flight SQL statements, shown by `pg_stat_activity` and
//! `tessera_progress` and stopped by `pg_cancel_backend(pid)`.
//!
//! A PostgreSQL connection registers its backend once authenticated (its pid is the one
//! the client got in BackendKeyData, so `pg_backend_pid()` and cancel requests agree);
//! the registration ends with the connection. A statement marks its backend active with
//! its text until its result stream ends or is dropped.
//!
//! A Flight SQL statement has no connection to name, so each one is a backend of its
//! own ([`Activity::register_call`]): a pid from the same counter, the caller's user and
//! address, `backend_type` `flight sql`, active from the call that runs it
//! (GetFlightInfo, PollFlightInfo, DoPut) until its result stream ends or is dropped;
//! then the row is gone. `pg_cancel_backend(pid)` cancels it as `CancelFlightInfo`
//! does. A Flight client's calls share its session, and so its progress counters.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tessera_planner::progress::{ProgressReading, StatementProgress};

use crate::edge::QueryControl;

/// The first backend pid handed out (as pgwire's own counter starts).
const FIRST_PID: i32 = 100_000;

/// The backends of one database's server; see the module docs.
#[derive(Debug)]
pub(crate) struct Activity {
    backends: Mutex<BTreeMap<i32, Arc<Backend>>>,
    /// The next backend pid: one counter for both wires, so every backend has its own.
    next_pid: AtomicI32,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            backends: Mutex::default(),
            next_pid: AtomicI32::new(FIRST_PID),
        }
    }
}

/// Which wire a backend serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BackendKind {
    /// A PostgreSQL connection.
    Postgres,
    /// One Flight SQL statement.
    FlightSql,
}

impl BackendKind {
    /// `pg_stat_activity.backend_type`.
    pub(crate) fn backend_type(self) -> &'static str {
        match self {
            BackendKind::Postgres => "client backend",
            BackendKind::FlightSql => "flight sql",
        }
    }
}

/// Who a backend serves.
#[derive(Debug, Clone)]
pub(crate) struct BackendInfo {
    pub(crate) kind: BackendKind,
    pub(crate) user: String,
    pub(crate) client_addr: String,
    /// `application_name` (a PostgreSQL startup parameter; `Arrow Flight SQL` for a
    /// Flight statement).
    pub(crate) application_name: String,
}

/// One connection.
#[derive(Debug)]
pub(crate) struct Backend {
    pid: i32,
    kind: BackendKind,
    user: String,
    client_addr: String,
    application_name: String,
    backend_start: SystemTime,
    control: Arc<QueryControl>,
    progress: Arc<StatementProgress>,
    now: Mutex<Running>,
}

/// What a backend runs now.
#[derive(Debug, Default)]
struct Running {
    /// The statement running, or the last one when idle.
    query: String,
    /// When it started.
    query_start: Option<SystemTime>,
    active: bool,
}

/// One row of `pg_stat_activity` and `tessera_progress`.
#[derive(Debug, Clone)]
pub(crate) struct BackendRow {
    pub(crate) pid: i32,
    pub(crate) kind: BackendKind,
    pub(crate) user: String,
    pub(crate) application_name: String,
    pub(crate) client_addr: String,
    pub(crate) backend_start: SystemTime,
    pub(crate) state: &'static str,
    pub(crate) query: String,
    pub(crate) query_start: Option<SystemTime>,
    pub(crate) progress: ProgressReading,
}

/// Why `pg_cancel_backend` did not cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelRefused {
    /// No backend has that pid.
    NoSuchBackend,
    /// The backend belongs to another user and the caller is not a superuser.
    NotYours,
}

impl Activity {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<i32, Arc<Backend>>> {
        self.backends.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new backend pid.
    pub(crate) fn next_pid(&self) -> i32 {
        // Wraps back to the start rather than into negative pids (after 2^31 backends).
        let pid = self.next_pid.fetch_add(1, Ordering::Relaxed);
        if pid < FIRST_PID {
            self.next_pid.store(FIRST_PID + 1, Ordering::Relaxed);
            return FIRST_PID;
        }
        pid
    }

    /// Registers a backend until the guard drops.
    pub(crate) fn register(
        self: &Arc<Self>,
        pid: i32,
        info: BackendInfo,
        control: Arc<QueryControl>,
        progress: Arc<StatementProgress>,
    ) -> ActivityGuard {
        let backend = Arc::new(Backend {
            pid,
            kind: info.kind,
            user: info.user,
            client_addr: info.client_addr,
            application_name: info.application_name,
            backend_start: SystemTime::now(),
            control,
            progress,
            now: Mutex::default(),
        });
        self.lock().insert(pid, Arc::clone(&backend));
        ActivityGuard {
            activity: Arc::clone(self),
            backend,
        }
    }

    /// Registers one Flight SQL statement as a backend of its own, active with `query`
    /// until the returned value drops (see the module docs).
    pub(crate) fn register_call(
        self: &Arc<Self>,
        info: BackendInfo,
        query: &str,
        control: Arc<QueryControl>,
        progress: Arc<StatementProgress>,
    ) -> CallActivity {
        let pid = self.next_pid();
        let guard = self.register(pid, info, control, progress);
        let statement = guard.start(query);
        CallActivity {
            _statement: statement,
            _guard: guard,
        }
    }

    /// Every backend, by pid.
    pub(crate) fn rows(&self) -> Vec<BackendRow> {
        self.lock()
            .values()
            .map(|b| {
                let now = b.now.lock().unwrap_or_else(|e| e.into_inner());
                BackendRow {
                    pid: b.pid,
                    kind: b.kind,
                    user: b.user.clone(),
                    application_name: b.application_name.clone(),
                    client_addr: b.client_addr.clone(),
                    backend_start: b.backend_start,
                    state: if now.active { "active" } else { "idle" },
                    query: now.query.clone(),
                    query_start: now.query_start,
                    progress: if now.active {
                        b.progress.read()
                    } else {
                        ProgressReading::default()
                    },
                }
            })
            .collect()
    }

    /// Cancels the statement backend `pid` runs, on behalf of `user` (`superuser`:
    /// any backend; otherwise only the user's own).
    pub(crate) fn cancel(
        &self,
        pid: i32,
        user: &str,
        superuser: bool,
    ) -> Result<(), CancelRefused> {
        let backend = self
            .lock()
            .get(&pid)
            .cloned()
            .ok_or(CancelRefused::NoSuchBackend)?;
        if !superuser && backend.user != user {
            return Err(CancelRefused::NotYours);
        }
        backend.control.cancel();
        Ok(())
    }
}

/// A registered backend; unregisters it when dropped.
#[derive(Debug)]
pub(crate) struct ActivityGuard {
    activity: Arc<Activity>,
    backend: Arc<Backend>,
}

impl ActivityGuard {
    /// Marks the backend active with `query` (its progress reset) until the returned
    /// guard drops.
    pub(crate) fn start(&self, query: &str) -> StatementActivity {
        self.backend.progress.reset();
        let mut now = self.backend.now.lock().unwrap_or_else(|e| e.into_inner());
        now.query = query.to_string();
        now.query_start = Some(SystemTime::now());
        now.active = true;
        StatementActivity {
            backend: Arc::clone(&self.backend),
        }
    }
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.activity.lock().remove(&self.backend.pid);
    }
}

/// A statement running on a backend; the backend is idle again when dropped.
#[derive(Debug)]
pub(crate) struct StatementActivity {
    backend: Arc<Backend>,
}

impl Drop for StatementActivity {
    fn drop(&mut self) {
        self.backend
            .now
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .active = false;
    }
}

/// A Flight SQL statement in `pg_stat_activity`; the row goes when this drops.
#[derive(Debug)]
pub(crate) struct CallActivity {
    // Before the guard: the statement ends, then the backend goes.
    _statement: StatementActivity,
    _guard: ActivityGuard,
}

impl CallActivity {
    /// The pid the statement was given.
    #[cfg(test)]
    fn pid(&self) -> i32 {
        self._statement.backend.pid
    }
}

/// What a statement is doing, from its progress: `reading blocks` while its scans have
/// blocks left, then `computing` (`tessera_progress.phase`).
pub(crate) fn phase(progress: &ProgressReading) -> &'static str {
    if progress.blocks_total > 0 && progress.blocks_done < progress.blocks_total {
        "reading blocks"
    } else {
        "computing"
    }
}

/// The fraction of its stored input a statement has read, in `[0, 1]`; 0 before its
/// scans have started.
pub(crate) fn fraction_read(progress: &ProgressReading) -> f64 {
    if progress.blocks_total == 0 {
        return 0.0;
    }
    (progress.blocks_done as f64 / progress.blocks_total as f64).clamp(0.0, 1.0)
}

/// One line on a running statement's progress, as NOTICE messages and the shell's
/// progress bar show it: `progress: reading blocks, 37 of 200 blocks, 2.4 MB read, 5.0 s
/// elapsed`.
pub(crate) fn progress_line(progress: &ProgressReading, elapsed: Duration) -> String {
    format!(
        "progress: {}, {} of {} blocks, {} read, {:.1} s elapsed",
        phase(progress),
        progress.blocks_done,
        progress.blocks_total,
        human_bytes(progress.bytes_done),
        elapsed.as_secs_f64()
    )
}

/// Bytes with a decimal unit: `512 B`, `2.4 MB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn progress_lines_name_phase_blocks_bytes_and_time() {
        let reading = ProgressReading {
            blocks_total: 200,
            blocks_done: 37,
            bytes_done: 2_400_000,
        };
        assert_eq!(
            progress_line(&reading, Duration::from_millis(5_040)),
            "progress: reading blocks, 37 of 200 blocks, 2.4 MB read, 5.0 s elapsed"
        );
        let done = ProgressReading {
            blocks_total: 2,
            blocks_done: 2,
            bytes_done: 999,
        };
        assert_eq!(
            progress_line(&done, Duration::ZERO),
            "progress: computing, 2 of 2 blocks, 999 B read, 0.0 s elapsed"
        );
        assert_eq!(fraction_read(&reading), 0.185);
        assert_eq!(fraction_read(&ProgressReading::default()), 0.0);
    }

    #[test]
    fn flight_calls_are_backends_until_they_end() {
        let activity = Arc::new(Activity::default());
        let info = BackendInfo {
            kind: BackendKind::FlightSql,
            user: "alice".into(),
            client_addr: "127.0.0.1".into(),
            application_name: "Arrow Flight SQL".into(),
        };
        let control = Arc::new(QueryControl::default());
        let call = activity.register_call(info, "SELECT 1", control, Arc::default());
        let rows = activity.rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].pid, call.pid());
        assert_eq!(
            (rows[0].state, rows[0].query.as_str()),
            ("active", "SELECT 1")
        );
        assert_eq!(rows[0].kind.backend_type(), "flight sql");
        assert_eq!(
            activity.cancel(call.pid(), "bob", false),
            Err(CancelRefused::NotYours)
        );
        assert_eq!(activity.cancel(call.pid(), "alice", false), Ok(()));
        drop(call);
        assert!(activity.rows().is_empty());
    }
}
