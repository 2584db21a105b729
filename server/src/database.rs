//! The embedded database: a data directory (or memory) with its arrays, tables, and the
//! memory pool every session shares.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::CatalogProviderList;
use datafusion::error::Result;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
    TrackConsumersPool,
};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use tessera_planner::{FileAccess, TesseraCatalog, storage_error};
use tessera_storage::{Store, WeakStore};

use crate::plan_cache::PlanCache;
use crate::session::Session;

/// Settings of a [`Database`].
#[derive(Debug, Clone, Default)]
pub struct DatabaseOptions {
    /// Bytes of memory all sessions' operators may hold together (DataFusion's memory
    /// pool). An operator that needs more spills to disk if it can, or fails with a
    /// `ResourcesExhausted` error, instead of the process running out of memory.
    /// `None`: [`DatabaseOptions::default_memory_limit`].
    pub memory_limit: Option<usize>,
    /// Bytes of decoded blocks the store keeps in memory for the next read, charged to
    /// the memory pool like an operator's (a block read again is not read, verified and
    /// decoded again). `None`: a quarter of the memory limit; `Some(0)`: no cache.
    pub block_cache: Option<usize>,
    /// Partitions a query runs in parallel (DataFusion's `target_partitions`).
    /// `None`: the number of CPUs.
    pub target_partitions: Option<usize>,
    /// Directory for spill files. `None`: the system's temporary directory.
    pub spill_dir: Option<PathBuf>,
    /// Workers (`tessera worker`) that run block dataflows over stored matrices;
    /// empty: every statement runs in this process. See docs/distributed.md.
    pub workers: Vec<url::Url>,
    /// The cluster's secret, sent with every request to the workers (which refuse
    /// requests without it).
    pub cluster_secret: Option<String>,
}

impl DatabaseOptions {
    /// The default memory budget: 70% of physical memory, or 4 GiB where physical
    /// memory cannot be read (it is read from `/proc/meminfo` on Linux).
    pub fn default_memory_limit() -> usize {
        match physical_memory() {
            Some(bytes) => (bytes as f64 * 0.7) as usize,
            None => 4 << 30,
        }
    }
}

/// The store's block cache charged to the memory pool queries draw from, as one
/// consumer (`block cache`), so the pool's limit bounds queries and cache together.
#[derive(Debug)]
struct PoolBudget {
    reservation: std::sync::Mutex<MemoryReservation>,
}

impl PoolBudget {
    fn new(runtime: &RuntimeEnv) -> Self {
        let reservation = MemoryConsumer::new(CACHE_CONSUMER).register(&runtime.memory_pool);
        PoolBudget {
            reservation: std::sync::Mutex::new(reservation),
        }
    }
}

impl tessera_storage::CacheBudget for PoolBudget {
    fn try_grow(&self, bytes: usize) -> bool {
        match self.reservation.lock() {
            Ok(r) => r.try_grow(bytes).is_ok(),
            Err(_) => false,
        }
    }

    fn shrink(&self, bytes: usize) {
        if let Ok(r) = self.reservation.lock() {
            r.shrink(bytes.min(r.size()));
        }
    }
}

/// Name of the block cache's consumer in the memory pool.
const CACHE_CONSUMER: &str = "block cache";

/// The memory pool queries and the block cache draw from: when a query's request does
/// not fit, the cache gives back least recently used blocks and the request is tried
/// again, so the cache only ever holds memory no query wants.
#[derive(Debug)]
struct YieldingPool {
    inner: Arc<dyn MemoryPool>,
    store: WeakStore,
}

impl std::fmt::Display for YieldingPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (the block cache yields)", self.inner)
    }
}

impl MemoryPool for YieldingPool {
    fn name(&self) -> &str {
        "yielding to the block cache"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.inner.register(consumer)
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.inner.unregister(consumer)
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.inner.grow(reservation, additional)
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.inner.shrink(reservation, shrink)
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        let refused = match self.inner.try_grow(reservation, additional) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        // The cache's own requests never evict for themselves here (it makes room by
        // its own order), and nothing is taken back for a request no cache could cover.
        if reservation.consumer().name() == CACHE_CONSUMER {
            return Err(refused);
        }
        // Only what is missing: the cache keeps the rest.
        let free = match self.inner.memory_limit() {
            MemoryLimit::Finite(limit) => limit.saturating_sub(self.inner.reserved()),
            _ => 0,
        };
        let missing = additional.saturating_sub(free).max(1);
        match self.store.upgrade() {
            Some(store) if store.release_block_cache(missing) > 0 => {
                self.inner.try_grow(reservation, additional)
            }
            _ => Err(refused),
        }
    }

    fn reserved(&self) -> usize {
        self.inner.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.inner.memory_limit()
    }
}

/// Physical memory in bytes, if the platform tells.
fn physical_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A Tessera database: arrays and tables, queried with SQL.
///
/// A data directory holds `store/` (the arrays: sharded, versioned blocks) and
/// `tables/` (tables as Parquet files, and the statements of external tables and views);
/// one process at a time may open it. [`Database::in_memory`] keeps everything in
/// memory. Cloning is cheap; clones share everything, including the default session
/// that [`Database::sql`] uses.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> tessera_server::Result<()> {
/// use datafusion::arrow::array::AsArray;
/// use datafusion::arrow::datatypes::Float64Type;
/// use tessera_server::Database;
///
/// let db = Database::in_memory()?;
/// let batches = db
///     .sql(
///         "CREATE MATRIX m (2, 3);
///          INSERT INTO m VALUES (0, 0, 1.5), (1, 2, 2.5), (1, 0, 4.0);
///          SELECT i, sum(v) AS s FROM m GROUP BY i ORDER BY i",
///     )
///     .await?;
/// let sums = batches[0].column(1).as_primitive::<Float64Type>();
/// assert_eq!(sums.values(), &[1.5, 6.5]);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Database {
    inner: Arc<Inner>,
    /// The session [`Database::sql`] uses (shared by clones).
    default_session: Session,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) catalog: Arc<TesseraCatalog>,
    pub(crate) catalogs: Arc<dyn CatalogProviderList>,
    pub(crate) runtime: Arc<RuntimeEnv>,
    pub(crate) options: DatabaseOptions,
    /// Stored definitions are planned by the first statement any session runs.
    pub(crate) restored: tokio::sync::OnceCell<()>,
    /// Physical plans of repeated queries, shared by every session.
    pub(crate) plans: Arc<PlanCache>,
    dir: Option<PathBuf>,
    /// Set by a server: which roles may use server files.
    file_policy: std::sync::RwLock<Option<FilePolicy>>,
    /// The workers block dataflows run on, when there are any.
    pub(crate) cluster: Option<Arc<tessera_planner::distributed::Cluster>>,
    /// The server's connections and what they run (`pg_stat_activity`).
    pub(crate) activity: Arc<crate::activity::Activity>,
}

/// Server files each role may use; set by a server with [`Database::set_file_policy`].
#[derive(Debug, Clone)]
pub(crate) struct FilePolicy {
    read_roles: Vec<String>,
    write_roles: Vec<String>,
    read_dirs: Vec<PathBuf>,
    write_dirs: Vec<PathBuf>,
}

impl Inner {
    /// The directories holding the database's own files, which no statement may read
    /// or write as a file (none in memory).
    pub(crate) fn storage_dirs(&self) -> Vec<PathBuf> {
        match &self.dir {
            Some(dir) => vec![dir.join("store"), dir.join("tables")],
            None => Vec::new(),
        }
    }
}

impl Database {
    /// Opens (creating if needed) the data directory `dir` with default options.
    pub fn open(dir: impl AsRef<Path>) -> Result<Database> {
        Self::open_with(dir, DatabaseOptions::default())
    }

    /// Opens (creating if needed) the data directory `dir`.
    pub fn open_with(dir: impl AsRef<Path>, options: DatabaseOptions) -> Result<Database> {
        let dir = dir.as_ref().to_path_buf();
        let store = Store::open_dir(dir.join("store")).map_err(storage_error)?;
        let catalog = TesseraCatalog::open(store.clone(), dir.join("tables"))?;
        Self::build(store, catalog, options, Some(dir))
    }

    /// An empty database in memory, with default options.
    pub fn in_memory() -> Result<Database> {
        Self::in_memory_with(DatabaseOptions::default())
    }

    /// An empty database in memory.
    pub fn in_memory_with(options: DatabaseOptions) -> Result<Database> {
        let store = Store::in_memory();
        let catalog = TesseraCatalog::in_memory(store.clone());
        Self::build(store, catalog, options, None)
    }

    fn build(
        store: Store,
        catalog: Arc<TesseraCatalog>,
        options: DatabaseOptions,
        dir: Option<PathBuf>,
    ) -> Result<Database> {
        let limit = options
            .memory_limit
            .unwrap_or_else(DatabaseOptions::default_memory_limit);
        // DataFusion's pool for a limit (greedy, naming the largest consumers when it
        // refuses), asking the store's block cache for memory back before refusing.
        let pool = Arc::new(YieldingPool {
            inner: Arc::new(TrackConsumersPool::new(
                GreedyMemoryPool::new(limit),
                std::num::NonZeroUsize::MIN.saturating_add(4),
            )),
            store: store.downgrade(),
        });
        let mut runtime = RuntimeEnvBuilder::new().with_memory_pool(pool);
        if let Some(spill) = &options.spill_dir {
            runtime = runtime.with_temp_file_path(spill.clone());
        }
        let runtime = runtime.build_arc()?;
        let cache = options.block_cache.unwrap_or(limit / 4);
        store.set_block_cache(cache, Arc::new(PoolBudget::new(&runtime)));
        let catalogs = catalog.catalog_list()?;
        let cluster = if options.workers.is_empty() {
            None
        } else {
            let cluster = tessera_planner::distributed::Cluster::new(
                options.workers.clone(),
                options.cluster_secret.as_deref(),
            )?;
            // The heartbeat needs a runtime; opened outside one, every worker counts as
            // live and a lost one fails the statements that use it.
            if tokio::runtime::Handle::try_current().is_ok() {
                cluster.start_heartbeat();
            }
            Some(cluster)
        };
        let inner = Arc::new(Inner {
            store,
            catalog,
            catalogs,
            runtime,
            options,
            restored: tokio::sync::OnceCell::new(),
            plans: Arc::default(),
            dir,
            file_policy: std::sync::RwLock::new(None),
            cluster,
            activity: Arc::default(),
        });
        let default_session = Session::new(inner.clone())?;
        Ok(Database {
            inner,
            default_session,
        })
    }

    /// Runs a script of one or more statements (separated by `;`) in the default
    /// session and returns the result of the last one. Statements run in order; the
    /// first error stops the script and is returned (earlier statements stay done).
    pub async fn sql(&self, text: &str) -> Result<Vec<RecordBatch>> {
        self.default_session.sql(text).await
    }

    /// Like [`Database::sql`], but streams the last statement's result.
    pub async fn sql_stream(&self, text: &str) -> Result<SendableRecordBatchStream> {
        self.default_session.sql_stream(text).await
    }

    /// How far the running statement of [`Database::sql`] and [`Database::sql_stream`]
    /// is (the shell's progress bar).
    pub(crate) fn statement_progress(&self) -> Arc<tessera_planner::progress::StatementProgress> {
        self.default_session.progress()
    }

    /// A new session: same data and memory pool, its own `SET` state.
    pub fn session(&self) -> Result<Session> {
        Session::new(self.inner.clone())
    }

    /// The array store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The catalog of tables and arrays (for the protocol servers).
    pub(crate) fn catalog(&self) -> &Arc<TesseraCatalog> {
        &self.inner.catalog
    }

    /// The data directory, or `None` for an in-memory database.
    pub fn data_dir(&self) -> Option<&Path> {
        self.inner.dir.as_deref()
    }

    /// Bytes statements hold in the shared memory pool right now; zero when no
    /// statement runs (nothing a finished statement computed stays charged). The
    /// store's block cache, charged to the same pool, is not counted: see
    /// [`Database::block_cache_bytes`].
    pub fn memory_reserved(&self) -> usize {
        self.inner
            .runtime
            .memory_pool
            .reserved()
            .saturating_sub(self.block_cache_bytes())
    }

    /// Bytes of decoded blocks the store's cache holds, charged to the memory pool.
    pub fn block_cache_bytes(&self) -> usize {
        self.inner.store.block_cache_stats().map_or(0, |s| s.bytes)
    }

    /// Restricts server files to the roles and directories `files` names (a server
    /// calls this once; an embedded database's sessions may use any file but the
    /// store's). The default directories are the data directory's `import/` and
    /// `export/`, created here.
    pub fn set_file_policy(&self, files: &crate::config::FilesConfig) -> Result<()> {
        let default_dir = |name: &str| -> Result<Vec<PathBuf>> {
            match &self.inner.dir {
                Some(dir) => {
                    let path = dir.join(name);
                    std::fs::create_dir_all(&path)?;
                    Ok(vec![path])
                }
                None => Ok(Vec::new()),
            }
        };
        let read_dirs = if files.read_dirs.is_empty() {
            default_dir("import")?
        } else {
            files.read_dirs.clone()
        };
        let write_dirs = if files.write_dirs.is_empty() {
            default_dir("export")?
        } else {
            files.write_dirs.clone()
        };
        *self
            .inner
            .file_policy
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(FilePolicy {
            read_roles: files.read_roles.clone(),
            write_roles: files.write_roles.clone(),
            read_dirs,
            write_dirs,
        });
        Ok(())
    }

    /// The server's connections and what they run.
    pub(crate) fn activity(&self) -> Arc<crate::activity::Activity> {
        Arc::clone(&self.inner.activity)
    }

    /// The server files `role` may use: any but the store's without a file policy,
    /// else what the policy grants the role.
    pub fn file_access_for(&self, role: &str) -> FileAccess {
        let forbidden = self.inner.storage_dirs();
        let policy = self
            .inner
            .file_policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match policy {
            None => FileAccess::unrestricted(forbidden),
            Some(p) => {
                let grant = |roles: &[String], dirs: &[PathBuf]| {
                    if roles.iter().any(|r| r == role) {
                        dirs.to_vec()
                    } else {
                        Vec::new()
                    }
                };
                FileAccess::restricted(
                    grant(&p.read_roles, &p.read_dirs),
                    grant(&p.write_roles, &p.write_dirs),
                    forbidden,
                )
            }
        }
    }

    /// The memory budget all sessions share, in bytes.
    pub fn memory_limit(&self) -> usize {
        self.inner
            .options
            .memory_limit
            .unwrap_or_else(DatabaseOptions::default_memory_limit)
    }
}
