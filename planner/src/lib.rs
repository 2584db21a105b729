//! # tessera-planner
//!
//! Plans SQL that mixes relational operators with linear algebra on DataFusion. This
//! crate grows with the SQL issue; today it holds the bridge that tells DataFusion how
//! an array's blocks are already partitioned in storage.

mod array_table;
pub mod ddl;
mod partitioning;

pub use array_table::{ArrayTable, CellListing, cell_schema};
pub use partitioning::{BLOCK_KEY_COLUMNS, stored_partitioning};
