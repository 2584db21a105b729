//! Blocks as Arrow data, one row per block, so operators pass blocks in record batches
//! and a block crosses a process boundary as Arrow IPC unchanged.
//!
//! A block row is `rows`, `cols`, `nnz` and three `BinaryView` columns: `values` (the
//! dense row-major values, or the CSR values), and for CSR blocks `indptr` and
//! `indices` (`u64`, little-endian; null for dense blocks). Each block's bytes are one
//! Arrow buffer of the view column, and a view only points into it, so `take`, `concat`
//! and the hash repartition of a batch move 16-byte views and share the values: a join,
//! repartition or broadcast of blocks never copies them. A dense block is read back in
//! place (its values stay the buffer they arrived in); a CSR block's index arrays are
//! converted to `usize` vectors for `sprs` when it is read.
//!
//! ```
//! use std::sync::Arc;
//! use arrow_array::RecordBatch;
//! use arrow_schema::Schema;
//! use tessera_storage::{Block, BlockColumns, BlockColumnsBuilder, DenseBlock, block_fields};
//!
//! let block = Block::Dense(DenseBlock::new(2, 2, vec![1.0, 0.0, 0.0, 4.0]).unwrap());
//! let mut builder = BlockColumnsBuilder::default();
//! builder.append(&block).unwrap();
//! let schema = Arc::new(Schema::new(block_fields()));
//! let batch = RecordBatch::try_new(schema, builder.finish()).unwrap();
//! let blocks = BlockColumns::try_new(batch.columns()).unwrap();
//! assert_eq!(blocks.block(0).unwrap(), block);
//! ```

use std::sync::Arc;

use arrow_array::builder::{ArrayBuilder, BinaryViewBuilder, UInt32Builder, UInt64Builder};
use arrow_array::{Array, ArrayRef, BinaryViewArray, UInt32Array, UInt64Array};
use arrow_buffer::{ArrowNativeType, Buffer, ScalarBuffer};
use arrow_schema::{DataType, Field};

use super::{Block, CsrBlock, DenseBlock};
use crate::error::{Result, StorageError};

/// Rows of the block.
pub const BLOCK_ROWS: &str = "rows";
/// Columns of the block.
pub const BLOCK_COLS: &str = "cols";
/// Non-zero cells of the block.
pub const BLOCK_NNZ: &str = "nnz";
/// The values: `rows * cols` row-major for a dense block, `nnz` for a CSR block.
pub const BLOCK_VALUES: &str = "values";
/// CSR row offsets (`rows + 1` of them); null for a dense block.
pub const BLOCK_INDPTR: &str = "indptr";
/// CSR column indices (`nnz` of them); null for a dense block.
pub const BLOCK_INDICES: &str = "indices";

/// How many columns a block takes in a batch.
pub const BLOCK_FIELD_COUNT: usize = 6;

/// The six fields of a block, in order; a block stream puts its keys (such as `bi`,
/// `bj`) in front of them.
pub fn block_fields() -> Vec<Field> {
    vec![
        Field::new(BLOCK_ROWS, DataType::UInt32, false),
        Field::new(BLOCK_COLS, DataType::UInt32, false),
        Field::new(BLOCK_NNZ, DataType::UInt64, false),
        Field::new(BLOCK_VALUES, DataType::BinaryView, false),
        Field::new(BLOCK_INDPTR, DataType::BinaryView, true),
        Field::new(BLOCK_INDICES, DataType::BinaryView, true),
    ]
}

/// Builds the block columns of a batch, one row per appended block.
#[derive(Debug, Default)]
pub struct BlockColumnsBuilder {
    rows: UInt32Builder,
    cols: UInt32Builder,
    nnz: UInt64Builder,
    values: BinaryViewBuilder,
    indptr: BinaryViewBuilder,
    indices: BinaryViewBuilder,
    bytes: usize,
}

impl BlockColumnsBuilder {
    /// Appends `block` as the next row. A dense block's values are shared, not copied.
    ///
    /// # Errors
    /// If a buffer of the block does not fit an Arrow view (4 GiB; a block of at most
    /// [`crate::MAX_BLOCK_CELLS`] cells always does).
    pub fn append(&mut self, block: &Block) -> Result<()> {
        let (rows, cols) = block.shape();
        // A block has at most MAX_BLOCK_CELLS (2^28) cells, so each side fits in u32.
        self.rows.append_value(rows as u32);
        self.cols.append_value(cols as u32);
        self.nnz.append_value(block.nnz() as u64);
        match block {
            Block::Dense(d) => {
                let buffer = d.buffer().inner().clone();
                self.bytes += buffer.len();
                append_buffer(&mut self.values, buffer)?;
                self.indptr.append_null();
                self.indices.append_null();
            }
            Block::Sparse(s) => {
                let data = Buffer::from_vec(s.data().to_vec());
                let indptr = Buffer::from_vec(s.indptr().iter().map(|&x| x as u64).collect());
                let indices = Buffer::from_vec(s.indices().iter().map(|&x| x as u64).collect());
                self.bytes += data.len() + indptr.len() + indices.len();
                append_buffer(&mut self.values, data)?;
                append_buffer(&mut self.indptr, indptr)?;
                append_buffer(&mut self.indices, indices)?;
            }
        }
        Ok(())
    }

    /// The bytes of block data appended so far.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Blocks appended so far.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True if no block was appended.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The six columns (see [`block_fields`]); the builder is empty again after.
    pub fn finish(&mut self) -> Vec<ArrayRef> {
        self.bytes = 0;
        vec![
            Arc::new(self.rows.finish()),
            Arc::new(self.cols.finish()),
            Arc::new(self.nnz.finish()),
            Arc::new(self.values.finish()),
            Arc::new(self.indptr.finish()),
            Arc::new(self.indices.finish()),
        ]
    }
}

/// Adds `buffer` as its own data buffer of `builder` and a view of all of it.
fn append_buffer(builder: &mut BinaryViewBuilder, buffer: Buffer) -> Result<()> {
    let too_large = || {
        StorageError::InvalidArgument(format!(
            "a block buffer of {} bytes is larger than an Arrow view holds",
            buffer.len()
        ))
    };
    let len = u32::try_from(buffer.len()).map_err(|_| too_large())?;
    let index = builder.append_block(buffer.clone());
    // `try_append_view` checks the range; binary data needs no further validation.
    builder
        .try_append_view(index, 0, len)
        .map_err(|_| too_large())
}

/// The block columns of a batch, read in place.
#[derive(Debug)]
pub struct BlockColumns<'a> {
    rows: &'a UInt32Array,
    cols: &'a UInt32Array,
    nnz: &'a UInt64Array,
    values: &'a BinaryViewArray,
    indptr: &'a BinaryViewArray,
    indices: &'a BinaryViewArray,
}

impl<'a> BlockColumns<'a> {
    /// Reads the six block columns starting at `columns[0]`; an error names the column
    /// whose type is not the block layout's.
    pub fn try_new(columns: &'a [ArrayRef]) -> Result<Self> {
        if columns.len() < BLOCK_FIELD_COUNT {
            return Err(StorageError::InvalidArgument(format!(
                "a block needs {BLOCK_FIELD_COUNT} columns, the batch has {}",
                columns.len()
            )));
        }
        fn column<'c, T: 'static>(columns: &'c [ArrayRef], at: usize, name: &str) -> Result<&'c T> {
            columns[at].as_any().downcast_ref::<T>().ok_or_else(|| {
                StorageError::InvalidArgument(format!(
                    "block column {name} has type {}, not the block layout's",
                    columns[at].data_type()
                ))
            })
        }
        Ok(Self {
            rows: column(columns, 0, BLOCK_ROWS)?,
            cols: column(columns, 1, BLOCK_COLS)?,
            nnz: column(columns, 2, BLOCK_NNZ)?,
            values: column(columns, 3, BLOCK_VALUES)?,
            indptr: column(columns, 4, BLOCK_INDPTR)?,
            indices: column(columns, 5, BLOCK_INDICES)?,
        })
    }

    /// Blocks in the batch.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True if the batch holds no block.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `(rows, cols)` of block `row` without reading its values.
    pub fn shape(&self, row: usize) -> (usize, usize) {
        (self.rows.value(row) as usize, self.cols.value(row) as usize)
    }

    /// Non-zero cells of block `row`.
    pub fn nnz(&self, row: usize) -> u64 {
        self.nnz.value(row)
    }

    /// The bytes of block data in row `row` (what an exchange moves for it).
    pub fn bytes(&self, row: usize) -> usize {
        let len = |a: &BinaryViewArray| {
            if a.is_null(row) {
                0
            } else {
                a.value(row).len()
            }
        };
        len(self.values) + len(self.indptr) + len(self.indices)
    }

    /// Block `row`. A dense block's values are the batch's buffer, not a copy.
    pub fn block(&self, row: usize) -> Result<Block> {
        let (rows, cols) = self.shape(row);
        let values = view_buffer(self.values, row);
        if self.indptr.is_null(row) {
            let values = typed::<f64>(values, "values")?;
            // The batch carries the count, written from the block: no second scan.
            let nnz = self.nnz(row) as usize;
            return Ok(Block::Dense(DenseBlock::with_nnz(rows, cols, values, nnz)?));
        }
        let indptr = typed::<u64>(view_buffer(self.indptr, row), "indptr")?;
        let indices = typed::<u64>(view_buffer(self.indices, row), "indices")?;
        let data = typed::<f64>(values, "values")?;
        Ok(Block::Sparse(CsrBlock::from_parts(
            rows,
            cols,
            indptr.iter().map(|&x| x as usize).collect(),
            indices.iter().map(|&x| x as usize).collect(),
            data.to_vec(),
        )?))
    }
}

/// The bytes of view `row` as a buffer: a slice of the data buffer it points into, or a
/// copy of the few bytes an inline view holds.
fn view_buffer(array: &BinaryViewArray, row: usize) -> Buffer {
    let raw = array.views()[row];
    let len = raw as u32;
    if len <= 12 {
        return Buffer::from(array.value(row).to_vec());
    }
    // Arrow's view layout: length, 4-byte prefix, buffer index, offset (32 bits each).
    let (buffer, offset) = ((raw >> 64) as u32, (raw >> 96) as u32);
    array.data_buffers()[buffer as usize].slice_with_length(offset as usize, len as usize)
}

/// `buffer` as `T`s, in place when it is aligned for `T` (always, for buffers Tessera
/// made and for Arrow IPC), else copied.
fn typed<T: ArrowNativeType>(buffer: Buffer, name: &str) -> Result<ScalarBuffer<T>> {
    let size = std::mem::size_of::<T>();
    if !buffer.len().is_multiple_of(size) {
        return Err(StorageError::InvalidArgument(format!(
            "block column {name} holds {} bytes, not a whole number of {size}-byte values",
            buffer.len()
        )));
    }
    let len = buffer.len() / size;
    if buffer.as_ptr().align_offset(std::mem::align_of::<T>()) == 0 {
        return Ok(ScalarBuffer::new(buffer, 0, len));
    }
    // A new buffer is allocated aligned.
    Ok(ScalarBuffer::new(
        Buffer::from_slice_ref(buffer.as_slice()),
        0,
        len,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::RecordBatch;
    use arrow_ipc::reader::StreamReader;
    use arrow_ipc::writer::StreamWriter;
    use arrow_schema::Schema;
    use arrow_select::concat::concat;
    use arrow_select::take::take;

    fn blocks() -> Vec<Block> {
        let dense = Block::Dense(DenseBlock::from_fn(3, 4, |r, c| (r * 4 + c) as f64 - 5.0));
        let sparse = Block::Sparse(
            CsrBlock::from_parts(3, 5, vec![0, 1, 1, 3], vec![4, 0, 2], vec![1.5, -2.0, 7.0])
                .unwrap(),
        );
        // One value: its 8 bytes fit in an inline view.
        let tiny = Block::Dense(DenseBlock::new(1, 1, vec![9.0]).unwrap());
        let empty = Block::Sparse(CsrBlock::zeros(2, 2));
        vec![dense, sparse, tiny, empty]
    }

    fn batch(blocks: &[Block]) -> RecordBatch {
        let mut builder = BlockColumnsBuilder::default();
        for b in blocks {
            builder.append(b).unwrap();
        }
        RecordBatch::try_new(Arc::new(Schema::new(block_fields())), builder.finish()).unwrap()
    }

    #[test]
    fn blocks_come_back_cell_for_cell() {
        let blocks = blocks();
        let batch = batch(&blocks);
        let read = BlockColumns::try_new(batch.columns()).unwrap();
        assert_eq!(read.len(), 4);
        for (row, b) in blocks.iter().enumerate() {
            let got = read.block(row).unwrap();
            assert_eq!(&got, b, "block {row}");
            assert_eq!(read.nnz(row), b.nnz() as u64);
            assert_eq!(read.shape(row), b.shape());
        }
        assert_eq!(read.bytes(0), 12 * 8);
        assert_eq!(read.bytes(1), 3 * 8 + 4 * 8 + 3 * 8);
    }

    #[test]
    fn a_dense_block_is_read_in_place() {
        let block = DenseBlock::from_fn(16, 16, |r, c| (r + c) as f64);
        let batch = batch(&[Block::Dense(block.clone())]);
        let read = BlockColumns::try_new(batch.columns()).unwrap();
        let Block::Dense(got) = read.block(0).unwrap() else {
            panic!("dense block read back as sparse");
        };
        assert_eq!(got.values().as_ptr(), block.values().as_ptr());
    }

    #[test]
    fn take_and_concat_share_the_values() {
        let blocks = blocks();
        let batch = batch(&blocks);
        let values = batch.column(3);
        let ptr = |array: &ArrayRef, row: usize| {
            let a = array.as_any().downcast_ref::<BinaryViewArray>().unwrap();
            a.value(row).as_ptr()
        };
        let taken = take(values.as_ref(), &UInt32Array::from(vec![1, 0]), None).unwrap();
        assert_eq!(ptr(&taken, 1), ptr(values, 0));
        assert_eq!(ptr(&taken, 0), ptr(values, 1));
        let joined = concat(&[values.as_ref(), taken.as_ref()]).unwrap();
        assert_eq!(ptr(&joined, 4), ptr(values, 1));
    }

    #[test]
    fn blocks_cross_arrow_ipc_unchanged() {
        let blocks = blocks();
        let batch = batch(&blocks);
        let mut bytes = Vec::new();
        {
            let mut writer = StreamWriter::try_new(&mut bytes, &batch.schema()).unwrap();
            writer.write(&batch).unwrap();
            writer.finish().unwrap();
        }
        let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
        let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
        assert_eq!(batches.len(), 1);
        let read = BlockColumns::try_new(batches[0].columns()).unwrap();
        for (row, b) in blocks.iter().enumerate() {
            assert_eq!(&read.block(row).unwrap(), b, "block {row} after IPC");
        }
    }

    #[test]
    fn columns_of_another_layout_are_refused_by_name() {
        let batch = batch(&blocks());
        let mut columns = batch.columns().to_vec();
        columns.swap(0, 2);
        let e = BlockColumns::try_new(&columns).unwrap_err().to_string();
        assert!(e.contains("block column rows has type UInt64"), "{e}");
    }
}
