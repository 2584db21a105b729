//! # tessera-planner
//!
//! Plans SQL that mixes relational operators with linear algebra on DataFusion. This
//! crate grows with the SQL issue; today it holds the bridge that tells DataFusion how
//! an array's blocks are already partitioned in storage.

mod partitioning;

pub use partitioning::{BLOCK_KEY_COLUMNS, stored_partitioning};
