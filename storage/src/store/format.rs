//! The bytes on disk: checksummed JSON for the catalog and manifests, and Arrow IPC
//! shard files with one record batch (one row) per block. `docs/format.md` describes
//! them byte by byte.

use std::sync::Arc;

use arrow_array::builder::{FixedSizeListBuilder, Int64Builder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, UInt32Type, UInt64Type};
use arrow_array::{
    Array, ArrayRef, FixedSizeListArray, ListArray, RecordBatch, StructArray, UInt8Array,
    UInt32Array, UInt64Array,
};
use arrow_buffer::{OffsetBuffer, ScalarBuffer, ToByteSlice};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::block::{Block, BlockFormat, CsrBlock, DenseBlock};
use crate::error::{Result, StorageError};
use crate::schema::{ArraySchema, BlockKey};

/// First bytes of every catalog and manifest file, before the checksum.
const JSON_MAGIC: &str = "TESSERA1";

/// `TESSERA1 <crc32 of the json, 8 hex digits>\n<json>`.
pub(crate) fn encode_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let json = serde_json::to_vec_pretty(value)
        .map_err(|e| StorageError::Internal(format!("cannot serialize metadata: {e}")))?;
    let mut out = format!("{JSON_MAGIC} {:08x}\n", crc32fast::hash(&json)).into_bytes();
    out.extend_from_slice(&json);
    Ok(out)
}

/// Parses and verifies what [`encode_json`] wrote.
pub(crate) fn decode_json<T: DeserializeOwned>(file: &str, bytes: &[u8]) -> Result<T> {
    let bad = |m: String| StorageError::CorruptCatalog {
        file: file.to_string(),
        message: m,
    };
    let header_len = JSON_MAGIC.len() + 10;
    if bytes.len() < header_len
        || !bytes.starts_with(JSON_MAGIC.as_bytes())
        || bytes[header_len - 1] != b'\n'
    {
        return Err(bad(format!(
            "missing '{JSON_MAGIC}' header ({} bytes)",
            bytes.len()
        )));
    }
    let hex = std::str::from_utf8(&bytes[JSON_MAGIC.len() + 1..header_len - 1])
        .ok()
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or_else(|| bad("unreadable checksum".into()))?;
    let json = &bytes[header_len..];
    let actual = crc32fast::hash(json);
    if actual != hex {
        return Err(bad(format!(
            "checksum mismatch: stored {hex:08x}, computed {actual:08x}"
        )));
    }
    serde_json::from_slice(json).map_err(|e| bad(format!("cannot parse: {e}")))
}

/// The Arrow schema of a shard file for an array.
pub(crate) fn shard_schema(schema: &ArraySchema) -> SchemaRef {
    let ndims = schema.dimensions().len() as i32;
    let mut fields = vec![
        Field::new(
            "key",
            DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Int64, false)), ndims),
            false,
        ),
        Field::new("version", DataType::UInt64, false),
        Field::new("checksum", DataType::UInt32, false),
    ];
    for (n, attr) in schema.attributes().iter().enumerate() {
        fields.push(
            Field::new(format!("attr_{n}"), DataType::Struct(block_fields()), false).with_metadata(
                [("tessera.attribute".to_string(), attr.name.clone())]
                    .into_iter()
                    .collect(),
            ),
        );
    }
    Arc::new(Schema::new(fields))
}

fn list_of(dt: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", dt, false)))
}

/// The struct type a block is stored as (see DESIGN.md, "Blocks in flight").
pub(crate) fn block_fields() -> Fields {
    Fields::from(vec![
        Field::new("rows", DataType::UInt32, false),
        Field::new("cols", DataType::UInt32, false),
        Field::new("format", DataType::UInt8, false),
        Field::new("nnz", DataType::UInt64, false),
        Field::new("values", list_of(DataType::Float64), false),
        Field::new("indptr", list_of(DataType::UInt32), false),
        Field::new("indices", list_of(DataType::UInt32), false),
    ])
}

/// A block in its stored form: what the checksum covers.
struct WireBlock {
    rows: u32,
    cols: u32,
    format: BlockFormat,
    nnz: u64,
    values: ScalarBuffer<f64>,
    indptr: ScalarBuffer<u32>,
    indices: ScalarBuffer<u32>,
}

impl WireBlock {
    fn from_block(block: &Block) -> Self {
        let (rows, cols) = block.shape();
        match block {
            Block::Dense(d) => WireBlock {
                rows: rows as u32,
                cols: cols as u32,
                format: BlockFormat::Dense,
                nnz: d.nnz() as u64,
                values: d.buffer().clone(),
                indptr: ScalarBuffer::from(Vec::<u32>::new()),
                indices: ScalarBuffer::from(Vec::<u32>::new()),
            },
            Block::Sparse(s) => WireBlock {
                rows: rows as u32,
                cols: cols as u32,
                format: BlockFormat::Csr,
                nnz: s.nnz() as u64,
                values: ScalarBuffer::from(s.data().to_vec()),
                // Block cells are capped at MAX_BLOCK_CELLS (2^28), so offsets fit u32.
                indptr: s.indptr().iter().map(|&p| p as u32).collect(),
                indices: s.indices().iter().map(|&c| c as u32).collect(),
            },
        }
    }

    fn hash_into(&self, h: &mut crc32fast::Hasher) {
        h.update(&[self.format as u8]);
        h.update(&self.rows.to_le_bytes());
        h.update(&self.cols.to_le_bytes());
        h.update(&self.nnz.to_le_bytes());
        h.update(self.values.to_byte_slice());
        h.update(self.indptr.to_byte_slice());
        h.update(self.indices.to_byte_slice());
    }

    fn into_struct(self) -> StructArray {
        fn list<T: arrow_array::ArrowPrimitiveType>(
            dt: DataType,
            values: ScalarBuffer<T::Native>,
        ) -> ArrayRef {
            let len = values.len();
            let inner = arrow_array::PrimitiveArray::<T>::new(values, None);
            Arc::new(ListArray::new(
                Arc::new(Field::new("item", dt, false)),
                OffsetBuffer::from_lengths([len]),
                Arc::new(inner),
                None,
            ))
        }
        let fmt = match self.format {
            BlockFormat::Dense => 0u8,
            BlockFormat::Csr => 1u8,
        };
        StructArray::new(
            block_fields(),
            vec![
                Arc::new(UInt32Array::from(vec![self.rows])),
                Arc::new(UInt32Array::from(vec![self.cols])),
                Arc::new(UInt8Array::from(vec![fmt])),
                Arc::new(UInt64Array::from(vec![self.nnz])),
                list::<Float64Type>(DataType::Float64, self.values),
                list::<UInt32Type>(DataType::UInt32, self.indptr),
                list::<UInt32Type>(DataType::UInt32, self.indices),
            ],
            None,
        )
    }

    fn from_struct(s: &StructArray) -> std::result::Result<Self, String> {
        fn col<T: Array + 'static>(s: &StructArray, n: usize) -> std::result::Result<&T, String> {
            s.column(n)
                .as_any()
                .downcast_ref::<T>()
                .ok_or_else(|| format!("block field {n} has type {}", s.column(n).data_type()))
        }
        fn list_values<T: arrow_array::ArrowPrimitiveType>(
            s: &StructArray,
            n: usize,
        ) -> std::result::Result<ScalarBuffer<T::Native>, String> {
            let l = col::<ListArray>(s, n)?;
            let inner = l.value(0);
            let p = inner.as_primitive_opt::<T>().ok_or_else(|| {
                format!("block field {n} has items of type {}", inner.data_type())
            })?;
            Ok(p.values().clone())
        }
        if s.len() != 1 {
            return Err(format!("expected one block per row, found {}", s.len()));
        }
        let format = match col::<UInt8Array>(s, 2)?.value(0) {
            0 => BlockFormat::Dense,
            1 => BlockFormat::Csr,
            f => return Err(format!("unknown block format {f}")),
        };
        Ok(WireBlock {
            rows: col::<UInt32Array>(s, 0)?.value(0),
            cols: col::<UInt32Array>(s, 1)?.value(0),
            format,
            nnz: col::<UInt64Array>(s, 3)?.value(0),
            values: list_values::<Float64Type>(s, 4)?,
            indptr: list_values::<UInt32Type>(s, 5)?,
            indices: list_values::<UInt32Type>(s, 6)?,
        })
    }

    fn into_block(self) -> std::result::Result<Block, String> {
        let (rows, cols) = (self.rows as usize, self.cols as usize);
        let block = match self.format {
            BlockFormat::Dense => {
                Block::Dense(DenseBlock::new(rows, cols, self.values).map_err(|e| e.to_string())?)
            }
            BlockFormat::Csr => Block::Sparse(
                CsrBlock::from_parts(
                    rows,
                    cols,
                    self.indptr.iter().map(|&p| p as usize).collect(),
                    self.indices.iter().map(|&c| c as usize).collect(),
                    self.values.to_vec(),
                )
                .map_err(|e| e.to_string())?,
            ),
        };
        if block.nnz() as u64 != self.nnz {
            return Err(format!(
                "block claims {} non-zeros but holds {}",
                self.nnz,
                block.nnz()
            ));
        }
        Ok(block)
    }
}

/// The checksum of a block as stored: it covers the array id, the version that wrote
/// the block, the block key and every attribute's block, so a block that moved to
/// another array, version or position fails verification.
fn checksum(array_id: u64, version: u64, key: &BlockKey, wires: &[WireBlock]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&array_id.to_le_bytes());
    h.update(&version.to_le_bytes());
    h.update(&(key.0.len() as u32).to_le_bytes());
    h.update(key.0.to_byte_slice());
    for w in wires {
        w.hash_into(&mut h);
    }
    h.finalize()
}

/// Encodes one block (all its attributes) as a one-row batch; returns it and its checksum.
pub(crate) fn encode_block(
    schema: &SchemaRef,
    array_id: u64,
    version: u64,
    key: &BlockKey,
    blocks: &[&Block],
) -> Result<(RecordBatch, u32)> {
    let wires: Vec<WireBlock> = blocks.iter().map(|b| WireBlock::from_block(b)).collect();
    let sum = checksum(array_id, version, key, &wires);
    let mut kb = FixedSizeListBuilder::new(Int64Builder::new(), key.0.len() as i32)
        .with_field(Arc::new(Field::new("item", DataType::Int64, false)));
    kb.values().append_slice(&key.0);
    kb.append(true);
    let key_col: FixedSizeListArray = kb.finish();
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(key_col),
        Arc::new(UInt64Array::from(vec![version])),
        Arc::new(UInt32Array::from(vec![sum])),
    ];
    cols.extend(
        wires
            .into_iter()
            .map(|w| Arc::new(w.into_struct()) as ArrayRef),
    );
    let batch = RecordBatch::try_new(schema.clone(), cols)
        .map_err(|e| StorageError::Internal(format!("cannot build block batch: {e}")))?;
    Ok((batch, sum))
}

/// What the manifest says a stored block must be.
pub(crate) struct Expected<'a> {
    pub array_id: u64,
    pub version: u64,
    pub key: &'a BlockKey,
    pub shape: (usize, usize),
}

/// The checksum the manifest keeps for a block's bytes in its shard file: CRC-32 over
/// the array id, the writing version, the block key and then the raw IPC message. It is
/// checked before Arrow sees a byte, so damaged bytes never reach a decoder.
pub(crate) fn frame_hasher(array_id: u64, version: u64, key: &BlockKey) -> crc32fast::Hasher {
    let mut h = crc32fast::Hasher::new();
    h.update(b"tessera-block");
    h.update(&array_id.to_le_bytes());
    h.update(&version.to_le_bytes());
    h.update(&(key.0.len() as u32).to_le_bytes());
    h.update(key.0.to_byte_slice());
    h
}

/// Decodes one verified IPC record-batch message (`0xFFFFFFFF`, metadata length,
/// metadata, body) against the shard schema, without the file's footer.
pub(crate) fn decode_frame(
    schema: &SchemaRef,
    frame: bytes::Bytes,
) -> std::result::Result<RecordBatch, String> {
    if frame.len() < 8 || frame[..4] != [0xff; 4] {
        return Err("block does not start an Arrow IPC message".into());
    }
    let meta = i32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let meta_len = usize::try_from(meta)
        .ok()
        .map(|m| m + 8)
        .filter(|&m| m <= frame.len());
    let Some(meta_len) = meta_len else {
        return Err(format!(
            "IPC metadata length {meta} does not fit the block's {} bytes",
            frame.len()
        ));
    };
    let block = arrow_ipc::Block::new(0, meta_len as i32, (frame.len() - meta_len) as i64);
    arrow_ipc::reader::FileDecoder::new(schema.clone(), arrow_ipc::MetadataVersion::V5)
        .read_record_batch(&block, &arrow_buffer::Buffer::from(frame))
        .map_err(|e| format!("cannot decode block: {e}"))?
        .ok_or_else(|| "IPC message holds no record batch".to_string())
}

/// Decodes and verifies a one-row batch; the error string says what failed.
pub(crate) fn decode_block(
    batch: &RecordBatch,
    want: &Expected<'_>,
) -> std::result::Result<Vec<Block>, String> {
    if batch.num_rows() != 1 || batch.num_columns() < 4 {
        return Err(format!(
            "batch has {} rows and {} columns",
            batch.num_rows(),
            batch.num_columns()
        ));
    }
    let key_col = batch
        .column(0)
        .as_fixed_size_list_opt()
        .ok_or("key column has the wrong type")?;
    let key_vals = key_col
        .values()
        .as_primitive_opt::<arrow_array::types::Int64Type>()
        .ok_or("key items have the wrong type")?;
    let key = BlockKey(key_vals.values().to_vec());
    let version = batch
        .column(1)
        .as_primitive_opt::<UInt64Type>()
        .ok_or("version column has the wrong type")?
        .value(0);
    let stored = batch
        .column(2)
        .as_primitive_opt::<UInt32Type>()
        .ok_or("checksum column has the wrong type")?
        .value(0);
    let mut wires = Vec::with_capacity(batch.num_columns() - 3);
    for col in &batch.columns()[3..] {
        let s = col
            .as_struct_opt()
            .ok_or("attribute column is not a struct")?;
        wires.push(WireBlock::from_struct(s)?);
    }
    if &key != want.key {
        return Err(format!(
            "file holds block {key} where block {} was expected (swapped data)",
            want.key
        ));
    }
    if version != want.version {
        return Err(format!(
            "file holds version {version} of the block where version {} was expected",
            want.version
        ));
    }
    let actual = checksum(want.array_id, want.version, want.key, &wires);
    if actual != stored {
        return Err(format!(
            "content checksum mismatch: stored {stored:08x}, computed {actual:08x}"
        ));
    }
    let blocks = wires
        .into_iter()
        .map(WireBlock::into_block)
        .collect::<std::result::Result<Vec<_>, _>>()?;
    if let Some(b) = blocks.iter().find(|b| b.shape() != want.shape) {
        return Err(format!(
            "block has shape {:?}, schema says {:?}",
            b.shape(),
            want.shape
        ));
    }
    Ok(blocks)
}

/// Checks that `bytes` is a whole Arrow IPC file of the shard schema `schema`: the
/// `ARROW1` magic at both ends, a footer that decodes, the schema in it. Returns the
/// record batches the footer lists, as `(offset, length)` of their messages. It reads
/// only the file's ends, so it is cheap enough for every file a snapshot opens.
pub(crate) fn check_shard_file(
    bytes: &[u8],
    schema: &SchemaRef,
) -> std::result::Result<Vec<(u64, u64)>, String> {
    const MAGIC: &[u8] = b"ARROW1";
    // Leading magic and its padding, trailing footer length and magic.
    if bytes.len() < 8 + 10 {
        return Err(format!(
            "{} bytes is too short for an Arrow IPC file",
            bytes.len()
        ));
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err("the file does not start with the Arrow IPC magic ARROW1".into());
    }
    let tail = bytes.len() - 10;
    if &bytes[tail + 4..] != MAGIC {
        return Err("the file does not end with the Arrow IPC magic ARROW1".into());
    }
    let footer_len = i32::from_le_bytes([
        bytes[tail],
        bytes[tail + 1],
        bytes[tail + 2],
        bytes[tail + 3],
    ]);
    let start = usize::try_from(footer_len)
        .ok()
        .and_then(|n| tail.checked_sub(n))
        .filter(|&s| s >= 8);
    let Some(start) = start else {
        return Err(format!(
            "the Arrow IPC footer length {footer_len} does not fit the file's {} bytes",
            bytes.len()
        ));
    };
    let footer = arrow_ipc::root_as_footer(&bytes[start..tail])
        .map_err(|e| format!("the Arrow IPC footer cannot be decoded: {e}"))?;
    let fb_schema = footer
        .schema()
        .ok_or("the Arrow IPC footer has no schema")?;
    // Arrow's conversion panics on some type ids a damaged footer can hold.
    let stored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        arrow_ipc::convert::fb_to_schema(fb_schema)
    }))
    .map_err(|_| "the Arrow IPC footer's schema cannot be decoded".to_string())?;
    if stored.fields() != schema.fields() {
        return Err("the Arrow IPC footer's schema is not the array's shard schema".into());
    }
    let batches = footer
        .recordBatches()
        .ok_or("the Arrow IPC footer lists no record batches")?;
    Ok(batches
        .iter()
        .map(|b| {
            let length = i64::from(b.metaDataLength()).saturating_add(b.bodyLength());
            (b.offset().max(0) as u64, length.max(0) as u64)
        })
        .collect())
}
