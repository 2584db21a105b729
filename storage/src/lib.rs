//! # tessera-storage
//!
//! Owns Tessera's arrays on disk and in memory: array schemas, dense and sparse
//! blocks, the SIMD kernels shared by the linear-algebra and relational operators,
//! the sharded, versioned block store, and file ingest and export.
//!
//! ```text
//!   files (csv, mtx, npy) --io--> cells --CooBuilder--> Block (dense | CSR)
//!                                                       |
//!              kernels (gemm, spmm, tsmm, ...) <--------+--------> store
//!                                                                   |
//!        catalog.json -> arrays/<id>/v<N>/manifest.json -> shard-<k>.arrow
//!                                                                   |
//!                                       Backend: local | memory | object_store | faulty
//! ```
//!
//! This crate never imports DataFusion; the planner builds on it.

pub mod backend;
mod block;
mod error;
pub mod io;
pub mod kernels;
mod partition;
mod schema;
mod store;

pub use block::{
    BLOCK_COLS, BLOCK_FIELD_COUNT, BLOCK_INDICES, BLOCK_INDPTR, BLOCK_NNZ, BLOCK_ROWS,
    BLOCK_VALUES, Block, BlockColumns, BlockColumnsBuilder, BlockFormat, CooBuilder, CsrBlock,
    DenseBlock, Duplicates, SPARSE_THRESHOLD, block_fields, is_stored,
};
pub use error::{Result, StorageError};
pub use partition::{
    HASH_PLACEMENT, MAX_SHARDS, MIXED_PLACEMENT, Partitioning, Placement, UNRECORDED_PLACEMENT,
    datafusion_hash,
};
pub use schema::{ArraySchema, Attribute, AttributeType, BlockKey, Dimension, MAX_BLOCK_CELLS};
pub use store::{
    ArrayInfo, ArrayWriter, BlockMeta, CacheBudget, CacheStats, Damage, Derived, LineageStats,
    LoadOptions, LoadSummary, PartTarget, Snapshot, Store, StoreOptions, Unlimited, VersionInfo,
    WeakStore, WriteMode, WrittenPart,
};
