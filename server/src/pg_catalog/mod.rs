//! A PostgreSQL system catalog over Tessera's catalog, so that psql's backslash
//! commands (`\d`, `\dt`, `\d name`, `\l`, `\dn`, `\df`, ...) and other clients'
//! catalog queries work.
//!
//! Three parts, in the order a query meets them:
//!
//! ```text
//!  a client's parsed statement ── rewrite_statement ──► DataFusion's tree ── planned in a Session with:
//!     OPERATOR(pg_catalog.~), ::regclass,      pg_catalog.pg_class, pg_attribute, ...  (tables.rs)
//!     COLLATE, pg_catalog.f(), ARRAY(...)      pg_table_is_visible, format_type, ...   (functions.rs)
//! ```
//!
//! - [`rewrite_statement`] / [`rewrite`] turn PostgreSQL-only syntax into trees
//!   DataFusion plans (see [`rewrite_statement`]'s module for the list).
//! - [`install`] registers schema `pg_catalog` in the session's default catalog, with
//!   tables built from the live catalog at each query, and the catalog functions.
//!
//! Arrays are relations of kind `r` (they are tables of cells to SQL), with access
//! method `blocks`, so `\d` and `\dt` list them beside tables; `\d+` shows their
//! shape in the Description column (`matrix 1000 x 1000, block 100 x 100, sparse,
//! 5 non-zeros`), and `\d name` their columns (`i`, `j` `bigint`, `v` `double
//! precision`). The queries psql 15 sends are kept in `tests/fixtures/psql15/`.

mod functions;
mod objects;
mod rewrite;
mod tables;
mod types;

use std::sync::Arc;

use datafusion::common::{Result, internal_datafusion_err};
use datafusion::prelude::SessionContext;
use tessera_planner::{DEFAULT_CATALOG, TesseraCatalog};

pub(crate) use functions::{setting_default, unknown_setting};
pub use rewrite::{rewrite, rewrite_statement};
pub use types::pg_type_of;

/// Whose connection a session serves, once a server's connection has authenticated:
/// its backend pid, user and whether the user is a superuser. `pg_backend_pid()` and
/// `pg_cancel_backend(pid)` read it.
#[derive(Debug, Default)]
pub struct BackendIdentity {
    who: std::sync::Mutex<Option<(i32, String, bool)>>,
}

impl BackendIdentity {
    /// Sets it.
    pub(crate) fn set(&self, pid: i32, user: &str, superuser: bool) {
        *self.who.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((pid, user.to_string(), superuser));
    }

    /// The backend pid, user and superuser flag, if a connection set them.
    pub(crate) fn get(&self) -> Option<(i32, String, bool)> {
        self.who.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The schema name the emulated catalog is registered under.
pub const PG_CATALOG_SCHEMA: &str = "pg_catalog";

/// Installs the emulated `pg_catalog` in `ctx`: the schema (in the default catalog,
/// shared by every session over the same catalog list; installing again replaces it)
/// and the catalog functions (in this session).
pub(crate) fn install(
    ctx: &SessionContext,
    catalog: Arc<TesseraCatalog>,
    activity: Arc<crate::activity::Activity>,
    backend: Arc<BackendIdentity>,
) -> Result<()> {
    let state = ctx.state();
    let catalogs = state.catalog_list().clone();
    let database = catalogs.catalog(DEFAULT_CATALOG).ok_or_else(|| {
        internal_datafusion_err!("no catalog '{DEFAULT_CATALOG}' to install pg_catalog in")
    })?;
    let sources = Arc::new(objects::Sources {
        catalogs: Arc::downgrade(&catalogs),
        tessera: catalog,
        functions: std::sync::OnceLock::new(),
        activity,
    });
    // Functions first, so that pg_proc lists the catalog functions too.
    functions::register(ctx, &sources);
    functions::register_backend(ctx, &sources, backend);
    let _ = sources.functions.set(objects::function_list(&ctx.state()));
    database.register_schema(
        PG_CATALOG_SCHEMA,
        Arc::new(tables::PgCatalogSchema::new(sources)),
    )?;
    Ok(())
}
