//! Physical plans of repeated read-only queries, shared by a database's sessions.
//!
//! Planning `SELECT 1` costs far more than running it (SQL -> logical -> optimized ->
//! physical, several hundred microseconds), so a statement text seen before reuses its
//! physical plan, re-executed after [`reset_plan_states`]. Results are never cached.
//!
//! A plan is reused only while nothing could have changed it:
//! - the key holds the statement text and the session's settings (every
//!   `datafusion.*` / `tessera.*` option, as an interned id);
//! - every statement that is not a plain read-only query (DDL, DML, COPY, `SET`,
//!   Tessera's own statements, COPY FROM STDIN), from any session or protocol, holds a
//!   [`WriteGuard`] from before it starts until its result stream is dropped. A guard
//!   bumps the database's write generation when taken and when dropped, and no plan is
//!   stored or reused while one is held;
//! - only plans whose unoptimized logical plan calls no volatile or stable function
//!   (`now()`, `random()`, `current_date`, the catalog functions that read the session)
//!   and reads no external files are stored (see [`cacheable_logical`]), and none whose
//!   physical plan keeps state that survives a reset (see [`cacheable_physical`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::listing::ListingTable;
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::TableType;
use datafusion::logical_expr::{Expr, LogicalPlan, TableScan, Volatility};
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::{ExecutionPlan, displayable};

/// Statements kept at most (each entry is one statement text under one set of settings).
const CAPACITY: usize = 512;

/// Entries dropped at once when the cache is full.
const EVICT: usize = CAPACITY / 8;

/// Statement texts longer than this are not cached (a bulk `INSERT ... VALUES` is not a
/// query anyway, and long texts would crowd the cache).
const MAX_TEXT: usize = 4096;

/// The plan cache of one database.
#[derive(Debug, Default)]
pub(crate) struct PlanCache {
    /// Bumped when a non-query statement starts and again when it ends.
    generation: AtomicU64,
    /// Non-query statements running now.
    writers: AtomicUsize,
    /// Physical plans, by statement text and settings id.
    entries: Mutex<Entries<u64, Arc<dyn ExecutionPlan>>>,
    /// Logical plans of statements with placeholders, by statement text, settings id
    /// and the parameter types the client declared: what Parse and Bind plan again and
    /// again. Each execution binds its values and optimizes and plans from there.
    generic: Mutex<Entries<GenericKey, LogicalPlan>>,
    /// Settings fingerprints (every option as `key=value`) to small ids.
    settings: Mutex<HashMap<String, u64>>,
}

type GenericKey = (u64, Vec<Option<DataType>>);

#[derive(Debug)]
struct Entries<K, P> {
    /// By statement text: one plan per key.
    by_text: HashMap<String, Vec<Entry<K, P>>>,
    len: usize,
    /// The generation all entries were planned in; older ones are dropped wholesale.
    generation: u64,
    tick: u64,
}

impl<K, P> Default for Entries<K, P> {
    fn default() -> Self {
        Entries {
            by_text: HashMap::new(),
            len: 0,
            generation: 0,
            tick: 0,
        }
    }
}

#[derive(Debug)]
struct Entry<K, P> {
    key: K,
    plan: P,
    last_used: u64,
}

/// Where the database stood when a statement started planning: its plan may be stored
/// only if nothing was written meanwhile.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    generation: u64,
    quiet: bool,
}

impl PlanCache {
    /// The id of a settings fingerprint (the same for every session with equal settings).
    pub(crate) fn settings_id(&self, fingerprint: String) -> u64 {
        let mut ids = self.settings.lock().unwrap_or_else(|e| e.into_inner());
        let next = ids.len() as u64;
        *ids.entry(fingerprint).or_insert(next)
    }

    /// The state to pass to [`PlanCache::insert`] after planning.
    pub(crate) fn ticket(&self) -> Ticket {
        let quiet = self.writers.load(Ordering::SeqCst) == 0;
        Ticket {
            generation: self.generation.load(Ordering::SeqCst),
            quiet,
        }
    }

    /// The plan stored for `text` under `settings`, ready to execute, if it is current.
    pub(crate) fn get(&self, text: &str, settings: u64) -> Option<Arc<dyn ExecutionPlan>> {
        let plan = self.lookup(&self.entries, text, &settings)?;
        // Operators keep per-run state (a hash join's build side, a scan's work queue).
        reset_plan_states(plan).ok()
    }

    /// Stores `plan` for `text` if no write started or ran since `ticket` was taken.
    pub(crate) fn insert(
        &self,
        ticket: Ticket,
        text: &str,
        settings: u64,
        plan: Arc<dyn ExecutionPlan>,
    ) {
        self.store(&self.entries, ticket, text, settings, plan);
    }

    /// The logical plan, placeholders unbound, stored for `text` planned under
    /// `settings` with the client's `declared` parameter types, if it is current.
    pub(crate) fn get_generic(
        &self,
        text: &str,
        settings: u64,
        declared: &[Option<DataType>],
    ) -> Option<LogicalPlan> {
        self.lookup(&self.generic, text, &(settings, declared.to_vec()))
    }

    /// Stores a statement's logical plan with its placeholders unbound, if it may be
    /// reused (see [`cacheable_generic`]) and nothing was written since `ticket`.
    pub(crate) fn insert_generic(
        &self,
        ticket: Ticket,
        text: &str,
        settings: u64,
        declared: &[Option<DataType>],
        plan: &LogicalPlan,
    ) {
        if cacheable_generic(plan) {
            let key = (settings, declared.to_vec());
            self.store(&self.generic, ticket, text, key, plan.clone());
        }
    }

    fn lookup<K: PartialEq + Clone, P: Clone>(
        &self,
        map: &Mutex<Entries<K, P>>,
        text: &str,
        key: &K,
    ) -> Option<P> {
        let ticket = self.ticket();
        if !ticket.quiet {
            return None;
        }
        let mut entries = lock(map);
        if entries.generation != ticket.generation {
            entries.clear(ticket.generation);
            return None;
        }
        entries.tick += 1;
        let tick = entries.tick;
        let entry = entries
            .by_text
            .get_mut(text)?
            .iter_mut()
            .find(|e| e.key == *key)?;
        entry.last_used = tick;
        Some(entry.plan.clone())
    }

    fn store<K: PartialEq + Clone, P>(
        &self,
        map: &Mutex<Entries<K, P>>,
        ticket: Ticket,
        text: &str,
        key: K,
        plan: P,
    ) {
        if text.len() > MAX_TEXT || !ticket.quiet {
            return;
        }
        let mut entries = lock(map);
        // Read under the lock, so that a plan stored here is never older than a
        // generation another statement has seen.
        let now = self.ticket();
        if !now.quiet || now.generation != ticket.generation {
            return;
        }
        if entries.generation != now.generation {
            entries.clear(now.generation);
        }
        if entries.len >= CAPACITY {
            entries.evict_oldest();
        }
        entries.tick += 1;
        let tick = entries.tick;
        let list = entries.by_text.entry(text.to_string()).or_default();
        let before = list.len();
        list.retain(|e| e.key != key);
        let replaced = before - list.len();
        list.push(Entry {
            key,
            plan,
            last_used: tick,
        });
        entries.len = entries.len + 1 - replaced;
    }

    /// Marks a statement that may change data, definitions or settings as running.
    pub(crate) fn begin_write(self: &Arc<Self>) -> WriteGuard {
        self.writers.fetch_add(1, Ordering::SeqCst);
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        // Plans from before the write are dropped now, not at the next lookup: they pin
        // the array versions they read, which this write may retire. (Dropped outside
        // the lock: the last pin of a retired version deletes its files.)
        let plans = lock(&self.entries).clear(generation);
        let generic = lock(&self.generic).clear(generation);
        drop((plans, generic));
        WriteGuard {
            cache: self.clone(),
        }
    }

    /// Plans currently stored (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.entries).len
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps stay consistent under a panic (they are only ever inserted into or
    // cleared), so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl<K: PartialEq + Clone, P> Entries<K, P> {
    /// Empties the cache for `generation`; returns what it held.
    fn clear(&mut self, generation: u64) -> HashMap<String, Vec<Entry<K, P>>> {
        self.len = 0;
        self.generation = generation;
        std::mem::take(&mut self.by_text)
    }

    /// Drops the least recently used eighth of the entries: one pass over the map per
    /// `EVICT` inserts, so a stream of distinct texts (a client that inlines its
    /// parameters) does not scan the whole cache at every statement.
    fn evict_oldest(&mut self) {
        let mut used: Vec<(u64, &String, &K)> = self
            .by_text
            .iter()
            .flat_map(|(text, list)| list.iter().map(move |e| (e.last_used, text, &e.key)))
            .collect();
        let count = EVICT.min(used.len());
        if count == 0 {
            return;
        }
        used.select_nth_unstable_by_key(count - 1, |(last_used, _, _)| *last_used);
        let victims: Vec<(String, K)> = used[..count]
            .iter()
            .map(|(_, text, key)| ((*text).clone(), (*key).clone()))
            .collect();
        for (text, key) in victims {
            if let Some(list) = self.by_text.get_mut(&text) {
                list.retain(|e| e.key != key);
                if list.is_empty() {
                    self.by_text.remove(&text);
                }
            }
        }
        self.len = self.by_text.values().map(Vec::len).sum();
    }
}

/// Held while a non-query statement runs; see the module docs.
#[derive(Debug)]
pub(crate) struct WriteGuard {
    cache: Arc<PlanCache>,
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        self.cache.generation.fetch_add(1, Ordering::SeqCst);
        self.cache.writers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// True for a plan that only reads: no DDL, DML, COPY, `SET`, `PREPARE`, `EXPLAIN`.
pub(crate) fn is_query(plan: &LogicalPlan) -> bool {
    let mut query = true;
    let _ = plan.apply_with_subqueries(|node| {
        if matches!(
            node,
            LogicalPlan::Dml(_)
                | LogicalPlan::Ddl(_)
                | LogicalPlan::Copy(_)
                | LogicalPlan::Statement(_)
                | LogicalPlan::Explain(_)
                | LogicalPlan::Analyze(_)
                | LogicalPlan::DescribeTable(_)
        ) {
            query = false;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    query
}

/// True when a read-only query's physical plan may be reused: every function it calls
/// is immutable, it has no placeholders or variables, and it reads no external files
/// (which can change without a statement). `plan` must be the unoptimized plan, before
/// `now()` and the like are folded into constants.
pub(crate) fn cacheable_logical(plan: &LogicalPlan) -> bool {
    let mut ok = is_query(plan);
    if !ok {
        return false;
    }
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && !cacheable_scan(scan)
        {
            ok = false;
            return Ok(TreeNodeRecursion::Stop);
        }
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                let volatile = match e {
                    Expr::ScalarFunction(f) => {
                        f.func.signature().volatility != Volatility::Immutable
                    }
                    Expr::AggregateFunction(f) => {
                        f.func.signature().volatility != Volatility::Immutable
                    }
                    Expr::WindowFunction(_) | Expr::Placeholder(_) | Expr::ScalarVariable(..) => {
                        true
                    }
                    _ => false,
                };
                if volatile {
                    ok = false;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })?;
        Ok(if ok {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    ok
}

/// True when a statement's logical plan, placeholders unbound, may be bound and
/// planned again for a later execution: a query or DML (`INSERT ... VALUES ($1, $2)`)
/// that reads none of the catalogs (whose rows may describe the session). Volatile
/// functions and external files are fine here: they are evaluated and listed when the
/// bound plan is optimized and planned, at each execution. The plan holds the table
/// providers it was planned with, so any write drops it (the write generation).
pub(crate) fn cacheable_generic(plan: &LogicalPlan) -> bool {
    let mut ok = true;
    let _ = plan.apply_with_subqueries(|node| {
        let bad = match node {
            LogicalPlan::Ddl(_)
            | LogicalPlan::Copy(_)
            | LogicalPlan::Explain(_)
            | LogicalPlan::Analyze(_)
            | LogicalPlan::DescribeTable(_) => true,
            LogicalPlan::Statement(s) => {
                !matches!(s, datafusion::logical_expr::Statement::Prepare(_))
            }
            LogicalPlan::TableScan(scan) => matches!(
                scan.table_name.schema(),
                Some("pg_catalog" | "information_schema")
            ),
            _ => false,
        };
        if bad {
            ok = false;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    ok
}

/// A scan of a stored table or array: not of files outside the database (an external
/// table's files can change without a statement), not of a view (planned as it is
/// scanned, so what it calls is not in the plan checked here), not of the catalogs
/// (whose functions and rows may describe the session).
fn cacheable_scan(scan: &TableScan) -> bool {
    if matches!(
        scan.table_name.schema(),
        Some("pg_catalog" | "information_schema")
    ) {
        return false;
    }
    let Ok(provider) = source_as_provider(&scan.source) else {
        return false;
    };
    provider.table_type() != TableType::View && !reads_external_files(provider.as_ref())
}

fn reads_external_files(provider: &dyn TableProvider) -> bool {
    provider.is::<ListingTable>()
}

/// True when `plan` can run again after [`reset_plan_states`] with nothing shared
/// between runs: no dynamic filters (a hash join's or a top-k sort's, which live in
/// the scan below them), no scalar subqueries (their results are shared), no
/// recursive queries, none of Tessera's operators that wrap another plan outside
/// their children or plan again as they run, and no distributed plan (its stages are named for one query and
/// handed to workers when it runs).
pub(crate) fn cacheable_physical(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let mut ok = true;
    let _ = plan.apply(|node| {
        if matches!(
            node.name(),
            "ScalarSubqueryExec"
                | "RecursiveQueryExec"
                | "WorkTableExec"
                | "CoPartitionedJoinExec"
                | "LateralBuiltinPerRowExec"
                | "DistributedExec"
        ) {
            ok = false;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    ok && !displayable(plan.as_ref())
        .indent(true)
        .to_string()
        .contains("DynamicFilter")
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::physical_plan::empty::EmptyExec;

    fn plan() -> Arc<dyn ExecutionPlan> {
        Arc::new(EmptyExec::new(Arc::new(
            datafusion::arrow::datatypes::Schema::empty(),
        )))
    }

    #[test]
    fn a_write_during_planning_keeps_the_plan_out() {
        let cache = Arc::new(PlanCache::default());
        let ticket = cache.ticket();
        drop(cache.begin_write());
        cache.insert(ticket, "SELECT 1", 0, plan());
        assert!(cache.get("SELECT 1", 0).is_none());

        let ticket = cache.ticket();
        cache.insert(ticket, "SELECT 1", 0, plan());
        assert!(cache.get("SELECT 1", 0).is_some());
        assert!(cache.get("SELECT 1", 1).is_none(), "other settings");
        let guard = cache.begin_write();
        // Dropped when the write starts, not at the next lookup: the plans pin the
        // array versions they read.
        assert_eq!(cache.len(), 0, "a write empties the cache");
        assert!(cache.get("SELECT 1", 0).is_none(), "a write is running");
        drop(guard);
        assert!(cache.get("SELECT 1", 0).is_none(), "a write ran");
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn the_least_recently_used_plan_goes_first() {
        let cache = Arc::new(PlanCache::default());
        for n in 0..CAPACITY {
            cache.insert(cache.ticket(), &format!("SELECT {n}"), 0, plan());
        }
        assert!(cache.get("SELECT 0", 0).is_some());
        cache.insert(cache.ticket(), "SELECT x", 0, plan());
        assert_eq!(cache.len(), CAPACITY - EVICT + 1);
        assert!(cache.get("SELECT 0", 0).is_some(), "used recently");
        for n in 1..=EVICT {
            assert!(
                cache.get(&format!("SELECT {n}"), 0).is_none(),
                "{n} evicted"
            );
        }
        assert!(cache.get(&format!("SELECT {}", EVICT + 1), 0).is_some());
        assert!(cache.get("SELECT x", 0).is_some());
    }
}
