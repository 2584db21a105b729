//! Cancel requests over the PostgreSQL wire: a client's second connection names the
//! backend pid and secret key of the connection whose statement should stop; the
//! registry finds that connection's [`QueryControl`] (see [`crate::edge`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use pgwire::api::cancel::CancelHandler;
use pgwire::api::{ClientInfo, PidSecretKeyGenerator, RandomPidSecretKeyGenerator};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::startup::SecretKey;

use crate::activity::Activity;
use crate::edge::QueryControl;

/// Backend pids and cancel keys: the pid from the database's [`Activity`] counter, which
/// Flight SQL statements draw from too, so every backend in `pg_stat_activity` has its
/// own; the secret key from pgwire's generator.
#[derive(Debug)]
pub(crate) struct BackendPids {
    activity: Arc<Activity>,
    keys: RandomPidSecretKeyGenerator,
}

impl BackendPids {
    pub(crate) fn new(activity: Arc<Activity>) -> Self {
        BackendPids {
            activity,
            keys: RandomPidSecretKeyGenerator::default(),
        }
    }
}

impl PidSecretKeyGenerator for BackendPids {
    fn generate(&self, client: &dyn ClientInfo) -> (i32, SecretKey) {
        let (_, key) = self.keys.generate(client);
        (self.activity.next_pid(), key)
    }
}

/// The connections that can be cancelled, by backend pid and secret key.
#[derive(Debug, Default)]
pub(crate) struct CancelRegistry {
    connections: Mutex<HashMap<(i32, Bytes), Arc<QueryControl>>>,
}

impl CancelRegistry {
    /// Registers a connection; it is unregistered when the guard drops.
    pub(crate) fn register(
        self: &Arc<Self>,
        pid: i32,
        secret: Bytes,
        control: Arc<QueryControl>,
    ) -> CancelGuard {
        if let Ok(mut map) = self.connections.lock() {
            map.insert((pid, secret.clone()), control);
        }
        CancelGuard {
            registry: self.clone(),
            key: (pid, secret),
        }
    }

    fn cancel(&self, pid: i32, secret: &Bytes) -> bool {
        let control = self
            .connections
            .lock()
            .ok()
            .and_then(|map| map.get(&(pid, secret.clone())).cloned());
        match control {
            Some(c) => {
                c.cancel();
                true
            }
            None => false,
        }
    }
}

/// Unregisters a connection from the [`CancelRegistry`] when dropped.
#[derive(Debug)]
pub(crate) struct CancelGuard {
    registry: Arc<CancelRegistry>,
    key: (i32, Bytes),
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Ok(mut map) = self.registry.connections.lock() {
            map.remove(&self.key);
        }
    }
}

/// The cancel handler pgwire calls for a CancelRequest.
#[derive(Debug)]
pub(crate) struct RegistryCancelHandler(pub(crate) Arc<CancelRegistry>);

#[async_trait]
impl CancelHandler for RegistryCancelHandler {
    async fn on_cancel_request(&self, request: CancelRequest) {
        let found = self.0.cancel(request.pid, &request.secret_key.to_bytes());
        tracing::debug!(pid = request.pid, found, "cancel request");
    }
}
