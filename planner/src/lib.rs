//! # tessera-planner
//!
//! Plans SQL that mixes relational operators with linear algebra on DataFusion: Tessera's
//! own statements ([`ddl`]), arrays as relations ([`ArrayTable`]), and the linear-algebra
//! extension ([`la`]).

mod array_table;
mod array_write;
mod catalog;
mod cell_scan;
mod classify;
mod copartition;
pub mod ddl;
pub mod distributed;
mod dml;
mod error;
pub mod explain;
mod file_access;
pub mod la;
pub mod ml;
mod partitioning;
pub mod progress;
mod query_export;
mod repartition;
pub mod session;
mod sql_types;
mod stored_table;
mod table_files;
mod view;

pub use array_table::{ArrayTable, CellListing, cell_schema};
pub use array_write::{
    AUTO_BLOCK_CELLS, AUTO_BLOCK_SIDE, NewMatrix, auto_block_size, shape_text, write_cells,
    write_query_as_matrix,
};
pub use catalog::{
    DEFAULT_CATALOG, DEFAULT_SCHEMA, DefinitionKind, NewTable, TesseraCatalog, split_version,
};
pub use cell_scan::CellScanExec;
pub use classify::classify_statement_error;
pub use copartition::{CoPartitionedJoinExec, CoPartitionedJoins};
pub use error::{ErrorKind, TesseraError, storage_error, storage_error_kind, tessera_error};
pub use file_access::{FileAccess, FileUse, check_file};
pub use partitioning::{
    BLOCK_KEY_COLUMNS, hash_placement_is_live, live_placement, placement_mismatch,
    stored_partitioning,
};
pub use repartition::alter_array_repartition;
pub use sql_types::PostgresTypes;
pub use stored_table::{StoredTable, StoredTableScanExec};
pub use view::SqlView;
