//! Array schemas: named int64 dimensions with a range and a block length, and typed
//! attributes. A matrix is a 2-d array `(i, j)` with one `DOUBLE` attribute `v`.

use serde::{Deserialize, Serialize};

use crate::error::{Result, StorageError};

/// One dimension of an array: cells `start..=end`, cut into blocks of `block_len` cells.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dimension {
    /// Dimension name, e.g. `i`.
    pub name: String,
    /// First coordinate (inclusive).
    pub start: i64,
    /// Last coordinate (inclusive).
    pub end: i64,
    /// Cells per block along this dimension.
    pub block_len: u64,
}

impl Dimension {
    /// A dimension `name start:end BLOCK block_len`; validated by [`ArraySchema::new`].
    pub fn new(name: impl Into<String>, start: i64, end: i64, block_len: u64) -> Self {
        Self {
            name: name.into(),
            start,
            end,
            block_len,
        }
    }

    /// Number of cells along this dimension.
    pub fn len(&self) -> u64 {
        // Validated at construction: end >= start and the difference fits.
        (self.end - self.start) as u64 + 1
    }

    /// Always false for a validated dimension; present for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.end < self.start
    }

    /// Number of blocks along this dimension (the last one may be short).
    pub fn block_count(&self) -> u64 {
        self.len().div_ceil(self.block_len)
    }

    /// Cells in block `b` along this dimension (the last block may be short).
    pub fn block_extent(&self, b: u64) -> u64 {
        let first = b * self.block_len;
        self.block_len.min(self.len().saturating_sub(first))
    }

    /// Block index and offset within the block of coordinate `x`, or `None` if outside.
    pub fn locate(&self, x: i64) -> Option<(u64, u64)> {
        if x < self.start || x > self.end {
            return None;
        }
        let rel = (x - self.start) as u64;
        Some((rel / self.block_len, rel % self.block_len))
    }
}

/// The type of an attribute. Blocks hold `f64` cells; `DOUBLE` is the type every
/// linear-algebra operator works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttributeType {
    /// IEEE 754 double precision (`DOUBLE`, `FLOAT8`).
    Double,
}

impl std::fmt::Display for AttributeType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttributeType::Double => f.write_str("DOUBLE"),
        }
    }
}

/// A named, typed attribute: every cell of the array has one value per attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribute {
    /// Attribute name, e.g. `v`.
    pub name: String,
    /// Its type.
    pub ty: AttributeType,
}

impl Attribute {
    /// A `DOUBLE` attribute.
    pub fn double(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ty: AttributeType::Double,
        }
    }
}

/// The shape of an array: its dimensions (at least one) and attributes (at least one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArraySchema {
    dimensions: Vec<Dimension>,
    attributes: Vec<Attribute>,
}

/// Largest number of cells in one block; keeps block offsets within `usize` and `i32`
/// Arrow list offsets on every platform.
pub const MAX_BLOCK_CELLS: u64 = 1 << 28;

impl ArraySchema {
    /// Validates and builds a schema.
    ///
    /// Rejected: no dimensions or attributes, duplicate or empty names, an empty range
    /// (`end < start`), a range whose length overflows `i64`, a zero block length, or a
    /// block of more than [`MAX_BLOCK_CELLS`] cells.
    pub fn new(dimensions: Vec<Dimension>, attributes: Vec<Attribute>) -> Result<Self> {
        let bad = |m: String| Err(StorageError::InvalidSchema(m));
        if dimensions.is_empty() {
            return bad("an array needs at least one dimension".into());
        }
        if attributes.is_empty() {
            return bad("an array needs at least one attribute".into());
        }
        let mut names = std::collections::HashSet::new();
        for name in dimensions
            .iter()
            .map(|d| &d.name)
            .chain(attributes.iter().map(|a| &a.name))
        {
            if name.is_empty() {
                return bad("dimension and attribute names must not be empty".into());
            }
            if !names.insert(name.to_ascii_lowercase()) {
                return bad(format!("name '{name}' is used twice"));
            }
        }
        let mut block_cells: u64 = 1;
        for d in &dimensions {
            if d.end < d.start {
                return bad(format!(
                    "dimension '{}' has an empty range {}:{}",
                    d.name, d.start, d.end
                ));
            }
            if d.end
                .checked_sub(d.start)
                .and_then(|x| x.checked_add(1))
                .is_none()
            {
                return bad(format!(
                    "dimension '{}' range {}:{} has more cells than fit in int64",
                    d.name, d.start, d.end
                ));
            }
            if d.block_len == 0 {
                return bad(format!("dimension '{}' has block length 0", d.name));
            }
            let extent = d.block_len.min(d.len());
            block_cells = block_cells.saturating_mul(extent);
        }
        if block_cells > MAX_BLOCK_CELLS {
            return bad(format!(
                "a block would hold {block_cells} cells; at most {MAX_BLOCK_CELLS} are allowed"
            ));
        }
        Ok(Self {
            dimensions,
            attributes,
        })
    }

    /// A `rows x cols` matrix `(i, j)` with one `DOUBLE` attribute `v`, cut into
    /// `block_rows x block_cols` blocks.
    pub fn matrix(rows: u64, cols: u64, block_rows: u64, block_cols: u64) -> Result<Self> {
        let dim = |name: &str, n: u64, b: u64| -> Result<Dimension> {
            if n == 0 {
                return Err(StorageError::InvalidSchema(format!(
                    "a matrix needs at least one {name}"
                )));
            }
            let end = i64::try_from(n - 1).map_err(|_| {
                StorageError::InvalidSchema(format!("{n} {name}s do not fit in int64"))
            })?;
            Ok(Dimension::new(
                if name == "row" { "i" } else { "j" },
                0,
                end,
                b,
            ))
        };
        Self::new(
            vec![
                dim("row", rows, block_rows)?,
                dim("column", cols, block_cols)?,
            ],
            vec![Attribute::double("v")],
        )
    }

    /// Dimensions in order.
    pub fn dimensions(&self) -> &[Dimension] {
        &self.dimensions
    }

    /// Attributes in order.
    pub fn attributes(&self) -> &[Attribute] {
        &self.attributes
    }

    /// True for a 2-d array with one `DOUBLE` attribute.
    pub fn is_matrix(&self) -> bool {
        self.dimensions.len() == 2
            && self.attributes.len() == 1
            && self.attributes[0].ty == AttributeType::Double
    }

    /// `(rows, cols)` of a 2-d array; for other ranks, the block-grid mapping of
    /// [`ArraySchema::block_shape`] applied to the whole array.
    pub fn shape2(&self) -> (u64, u64) {
        flatten2(self.dimensions.iter().map(Dimension::len))
    }

    /// Number of blocks along each dimension.
    pub fn block_grid(&self) -> Vec<u64> {
        self.dimensions.iter().map(Dimension::block_count).collect()
    }

    /// Total number of blocks (saturating).
    pub fn block_count(&self) -> u64 {
        self.dimensions
            .iter()
            .map(Dimension::block_count)
            .fold(1u64, u64::saturating_mul)
    }

    /// Whether `key` names a block of this array.
    pub fn check_key(&self, key: &BlockKey) -> Result<()> {
        if key.0.len() != self.dimensions.len()
            || key
                .0
                .iter()
                .zip(&self.dimensions)
                .any(|(&b, d)| b < 0 || b as u64 >= d.block_count())
        {
            return Err(StorageError::InvalidArgument(format!(
                "block {key} is outside the block grid {:?}",
                self.block_grid()
            )));
        }
        Ok(())
    }

    /// The 2-d shape `(rows, cols)` of the block at `key`.
    ///
    /// Blocks are 2-d tiles. A 2-d array's block is its `r x c` tile; a 1-d array's block
    /// is a column `n x 1`; an n-d block (n > 2) is stored row-major with all leading
    /// dimensions flattened into rows and the last dimension as columns.
    pub fn block_shape(&self, key: &BlockKey) -> (usize, usize) {
        let extents = self
            .dimensions
            .iter()
            .zip(&key.0)
            .map(|(d, &b)| d.block_extent(b.max(0) as u64));
        let (r, c) = flatten2(extents);
        (r as usize, c as usize)
    }
}

fn flatten2(extents: impl ExactSizeIterator<Item = u64>) -> (u64, u64) {
    let v: Vec<u64> = extents.collect();
    match v.as_slice() {
        [n] => (*n, 1),
        [lead @ .., last] => (lead.iter().fold(1u64, |a, &b| a.saturating_mul(b)), *last),
        [] => (0, 0),
    }
}

/// Coordinates of a block in the block grid (0-based block indices, one per dimension).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlockKey(pub Vec<i64>);

impl BlockKey {
    /// The key of block `(bi, bj)` of a matrix.
    pub fn matrix(bi: i64, bj: i64) -> Self {
        Self(vec![bi, bj])
    }
}

impl std::fmt::Display for BlockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(")?;
        for (n, b) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{b}")?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests may panic

    use super::*;

    #[test]
    fn matrix_blocks_cover_the_shape() {
        let s = ArraySchema::matrix(10, 7, 4, 3).unwrap();
        assert_eq!(s.block_grid(), vec![3, 3]);
        assert_eq!(s.block_shape(&BlockKey::matrix(0, 0)), (4, 3));
        assert_eq!(s.block_shape(&BlockKey::matrix(2, 2)), (2, 1));
        assert_eq!(s.dimensions()[0].locate(9), Some((2, 1)));
        assert_eq!(s.dimensions()[0].locate(10), None);
    }

    #[test]
    fn invalid_schemas_are_rejected_with_the_reason() {
        let err = |r: Result<ArraySchema>| r.unwrap_err().to_string();
        let a = || vec![Attribute::double("v")];
        assert!(
            err(ArraySchema::new(vec![Dimension::new("i", 5, 4, 1)], a())).contains("empty range")
        );
        assert!(
            err(ArraySchema::new(vec![Dimension::new("i", 0, 9, 0)], a()))
                .contains("block length 0")
        );
        assert!(
            err(ArraySchema::new(
                vec![Dimension::new("i", i64::MIN, i64::MAX, 10)],
                a()
            ))
            .contains("fit in int64")
        );
        assert!(
            err(ArraySchema::new(vec![Dimension::new("i", 0, 9, 1)], vec![])).contains("attribute")
        );
        assert!(
            err(ArraySchema::new(vec![Dimension::new("v", 0, 9, 1)], a())).contains("used twice")
        );
        assert!(err(ArraySchema::matrix(1 << 20, 1 << 20, 1 << 15, 1 << 15)).contains("cells"));
        assert!(err(ArraySchema::matrix(0, 3, 1, 1)).contains("at least one row"));
    }

    #[test]
    fn nd_blocks_flatten_leading_dimensions() {
        let s = ArraySchema::new(
            vec![
                Dimension::new("x", 0, 9, 5),
                Dimension::new("y", 0, 3, 2),
                Dimension::new("z", -3, 3, 7),
            ],
            vec![Attribute::double("t")],
        )
        .unwrap();
        assert_eq!(s.block_shape(&BlockKey(vec![1, 1, 0])), (10, 7));
        let one = ArraySchema::new(
            vec![Dimension::new("x", 0, 9, 4)],
            vec![Attribute::double("t")],
        )
        .unwrap();
        assert_eq!(one.block_shape(&BlockKey(vec![2])), (2, 1));
    }
}
