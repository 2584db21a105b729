//! `ALTER ARRAY name REPARTITION [WITH (shards = n)]` (also `ALTER MATRIX`): rewrites
//! the current version of an array whole, as a new version whose blocks are placed by
//! the live placement ([`crate::live_placement`]), optionally with another shard count.
//!
//! An array whose recorded placement is not the live one (written by a build that
//! hashed block keys differently, or placed by another function) is read with unknown
//! partitioning: its answers are exact, but its joins repartition. After the rewrite it
//! is hash-partitioned again and takes the co-partitioned join. The rewrite commits like
//! any write (atomically: a reader sees the old version or the new one), older versions
//! stay readable as they were stored, and their files go when they are retired, as
//! after any write.

use std::sync::Arc;

use datafusion::common::{Result, plan_err};
use tessera_storage::{HASH_PLACEMENT, MAX_SHARDS, Partitioning};

use crate::catalog::TesseraCatalog;
use crate::error::{ErrorKind, blocking, storage_error, tessera_error};
use crate::partitioning::live_placement;

/// Executes `ALTER ARRAY name REPARTITION [WITH (shards = n)]`: the array keeps its
/// partitioning scheme (hash or block rows; `shards` changes the shard count) and is
/// rewritten as a new version placed by this build. Returns the new version's number.
///
/// Fails if `name` is not an array, if a grid-partitioned array is given a shard count
/// (a grid needs its row and column counts), or if this build's DataFusion does not
/// hash block keys as its storage places them (then no placement is live and none can
/// be written).
pub async fn alter_array_repartition(
    catalog: &Arc<TesseraCatalog>,
    name: &str,
    shards: Option<u32>,
) -> Result<u64> {
    let what = format!("ALTER ARRAY {name} REPARTITION");
    let info = match catalog.kind_of(name) {
        Some("array") => catalog.array(name),
        Some(kind) => return plan_err!("{what}: '{name}' is a {kind}, not an array"),
        None => None,
    };
    let Some(info) = info else {
        return Err(tessera_error(
            ErrorKind::UndefinedTable,
            format!("{what}: array '{name}' does not exist"),
        ));
    };
    if let Some(n) = shards
        && !(1..=MAX_SHARDS).contains(&n)
    {
        return Err(tessera_error(
            ErrorKind::InvalidParameterValue,
            format!("{what}: shards must be between 1 and {MAX_SHARDS}, got {n}"),
        ));
    }
    let partitioning = match (info.partitioning, shards) {
        (Partitioning::Hash { shards: now }, n) => Partitioning::Hash {
            shards: n.unwrap_or(now),
        },
        (Partitioning::RowBlock { shards: now }, n) => Partitioning::RowBlock {
            shards: n.unwrap_or(now),
        },
        (grid @ Partitioning::Grid { .. }, None) => grid,
        (Partitioning::Grid { .. }, Some(_)) => {
            return plan_err!(
                "{what}: '{name}' is partitioned as a grid, which has row and column shard \
                 counts; WITH (shards = n) applies to hash and row-block partitioning"
            );
        }
    };
    if matches!(partitioning, Partitioning::Hash { .. }) && live_placement() != Some(HASH_PLACEMENT)
    {
        return Err(tessera_error(
            ErrorKind::FeatureNotSupported,
            format!(
                "{what}: this build's DataFusion does not hash block keys as its storage \
                 places them ({HASH_PLACEMENT}), so no hash placement can be written that \
                 DataFusion agrees with; the array stays readable with unknown partitioning"
            ),
        ));
    }
    let store = catalog.store().clone();
    let name = name.to_string();
    let version = blocking(move || {
        store
            .repartition(&name, Some(partitioning))
            .map_err(storage_error)
    })
    .await?;
    tracing::info!(
        array = %info.name,
        version,
        partitioning = ?partitioning,
        "array rewritten with the live placement"
    );
    Ok(version)
}
