//! Who is connected and what they run: the backends of a server's PostgreSQL
//! connections, shown by `pg_stat_activity` and `tessera_progress` and stopped by
//! `pg_cancel_backend(pid)`.
//!
//! A connection registers its backend once authenticated (its pid is the one the
//! client got in BackendKeyData, so `pg_backend_pid()` and cancel requests agree); the
//! registration ends with the connection. A statement marks its backend active with its
//! text until its result stream ends or is dropped. Flight SQL calls are not listed:
//! they have no connection to name (a statement there is stopped by cancelling its
//! call).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tessera_planner::progress::{ProgressReading, StatementProgress};

use crate::edge::QueryControl;

/// The backends of one database's server; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    backends: Mutex<BTreeMap<i32, Arc<Backend>>>,
}

/// One connection.
#[derive(Debug)]
pub(crate) struct Backend {
    pid: i32,
    user: String,
    client_addr: String,
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
    pub(crate) user: String,
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

    /// Registers a connection's backend until the guard drops.
    pub(crate) fn register(
        self: &Arc<Self>,
        pid: i32,
        user: &str,
        client_addr: String,
        control: Arc<QueryControl>,
        progress: Arc<StatementProgress>,
    ) -> ActivityGuard {
        let backend = Arc::new(Backend {
            pid,
            user: user.to_string(),
            client_addr,
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

    /// Every backend, by pid.
    pub(crate) fn rows(&self) -> Vec<BackendRow> {
        self.lock()
            .values()
            .map(|b| {
                let now = b.now.lock().unwrap_or_else(|e| e.into_inner());
                BackendRow {
                    pid: b.pid,
                    user: b.user.clone(),
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
