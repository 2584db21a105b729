//! `COPY ... FROM STDIN` and `COPY ... TO STDOUT` in PostgreSQL's text, CSV and binary
//! formats.
//!
//! In: a [`CopyDecoder`] takes the client's CopyData messages as they come, cut
//! anywhere, and turns every complete row into columns of the target's types; each
//! time it holds a batch's worth of rows it hands back a [`RecordBatch`], which the
//! connection sends on to the one INSERT that writes the whole COPY (so nothing is
//! visible before CopyDone, and a bad row commits nothing). A bad row is an error that
//! names its line (text, CSV) or its row and field (binary), with its SQLSTATE carried
//! as an [`ErrorKind`]. Out: rows encoded one by one, in the text, CSV or binary format.

use std::sync::{Arc, Mutex};

use bytes::{BufMut, BytesMut};
use datafusion::arrow::array::{
    Array, ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Float32Builder,
    Float64Builder, Int64Builder, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondBuilder, new_null_array,
};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{Result, exec_datafusion_err};
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use pgwire::api::results::FieldFormat;
use tokio::sync::mpsc::Receiver;

use tessera_planner::{ErrorKind, tessera_error};

use super::statement::CopyFormat;
use super::types::{PG_EPOCH_DAYS, PG_EPOCH_MICROS, encode_field, encode_text, numeric_text};

/// The 11 bytes that open PostgreSQL's binary COPY format.
const BINARY_SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// A batch is handed on once its decoded rows hold this many bytes, even if it has fewer
/// rows than the session's batch size (wide text rows).
const BATCH_BYTES: usize = 8 << 20;

/// Where in the input a row is, for error messages.
#[derive(Clone, Copy)]
enum Place {
    Line(usize),
    Row(u64),
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Line(n) => write!(f, "line {n}"),
            Place::Row(n) => write!(f, "row {n}"),
        }
    }
}

fn copy_error(
    kind: ErrorKind,
    what: &str,
    place: Place,
    message: impl std::fmt::Display,
) -> datafusion::common::DataFusionError {
    tessera_error(kind, format!("COPY {what}, {place}: {message}"))
}

/// An error in field `k` (from 0) of binary row `row` (from 1).
fn field_error(
    kind: ErrorKind,
    what: &str,
    row: u64,
    k: usize,
    name: &str,
    message: impl std::fmt::Display,
) -> datafusion::common::DataFusionError {
    tessera_error(
        kind,
        format!(
            "COPY {what}, row {row}, field {} ({name}): {message}",
            k + 1
        ),
    )
}

/// Decodes the data of one `COPY ... FROM STDIN` into batches of the target's columns.
pub(crate) struct CopyDecoder {
    what: String,
    format: CopyFormat,
    /// The target's columns, all nullable (columns the input lacks are NULL).
    schema: SchemaRef,
    /// For each input field, the target column it fills.
    targets: Vec<usize>,
    /// For each target column, true if it does not allow NULL.
    required: Vec<bool>,
    batch_rows: usize,
    /// Data received and not yet decoded start at `pending[at..]`.
    pending: Vec<u8>,
    at: usize,
    /// The header line (HEADER) or the binary header has been read.
    started: bool,
    /// The end marker (`\.` or the binary trailer) has been read: the rest is ignored.
    ended: bool,
    /// Text and CSV: the line the next row starts on.
    line: usize,
    /// Rows decoded so far.
    rows: u64,
    /// Rows decoded before the batch being built.
    batch_start: u64,
    columns: Columns,
}

enum Columns {
    /// Text and CSV: each field as text, and the line each row started on.
    Text {
        lines: Vec<usize>,
        fields: Vec<StringBuilder>,
    },
    Binary(Vec<BinaryColumn>),
}

impl CopyDecoder {
    /// A decoder for `COPY what [(columns)] FROM STDIN` into a target with `schema`
    /// (`columns` empty: all of them, in order).
    pub(crate) fn new(
        what: &str,
        format: &CopyFormat,
        schema: &SchemaRef,
        columns: &[String],
        batch_rows: usize,
    ) -> Result<Self> {
        let targets: Vec<usize> = if columns.is_empty() {
            (0..schema.fields().len()).collect()
        } else {
            columns
                .iter()
                .map(|c| {
                    schema.index_of(c).map_err(|_| {
                        tessera_error(
                            ErrorKind::UndefinedColumn,
                            format!("COPY {what}: no column \"{c}\""),
                        )
                    })
                })
                .collect::<Result<_>>()?
        };
        let columns = if format.binary {
            Columns::Binary(
                targets
                    .iter()
                    .map(|&t| BinaryColumn::new(schema.field(t), what))
                    .collect::<Result<_>>()?,
            )
        } else {
            Columns::Text {
                lines: Vec::new(),
                fields: targets.iter().map(|_| StringBuilder::new()).collect(),
            }
        };
        let nullable = Arc::new(Schema::new(
            schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        Ok(CopyDecoder {
            what: what.to_string(),
            format: format.clone(),
            schema: nullable,
            targets,
            required: schema.fields().iter().map(|f| !f.is_nullable()).collect(),
            batch_rows: batch_rows.max(1),
            pending: Vec::new(),
            at: 0,
            started: false,
            ended: false,
            line: 1,
            rows: 0,
            batch_start: 0,
            columns,
        })
    }

    /// The schema of the batches: the target's columns, nullable.
    pub(crate) fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The number of fields each row has.
    pub(crate) fn width(&self) -> usize {
        self.targets.len()
    }

    /// Rows decoded so far.
    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes held: data not yet decoded and the rows of the batch being built.
    pub(crate) fn memory(&self) -> usize {
        let columns = match &self.columns {
            Columns::Text { lines, fields, .. } => {
                lines.capacity() * 8
                    + fields
                        .iter()
                        .map(|b| b.values_slice().len() + b.offsets_slice().len() * 4)
                        .sum::<usize>()
            }
            Columns::Binary(columns) => columns.iter().map(BinaryColumn::memory).sum(),
        };
        self.pending.capacity() + columns
    }

    /// Takes more of the client's data.
    pub(crate) fn extend(&mut self, data: &[u8]) {
        if self.ended {
            return;
        }
        if self.at > 0 {
            self.pending.drain(..self.at);
            self.at = 0;
        }
        self.pending.extend_from_slice(data);
    }

    /// The next full batch, if the data so far hold one; with `last` (the data are
    /// complete), the rows that remain, then `None`.
    pub(crate) fn next_batch(&mut self, last: bool) -> Result<Option<RecordBatch>> {
        loop {
            let held = (self.rows - self.batch_start) as usize;
            if held >= self.batch_rows || (held > 0 && self.columns_bytes() >= BATCH_BYTES) {
                return self.finish_batch().map(Some);
            }
            let more = if self.ended {
                false
            } else if self.format.binary {
                self.binary_row(last)?
            } else if self.format.csv {
                self.csv_row(last)?
            } else {
                self.text_row(last)?
            };
            if !more {
                break;
            }
        }
        if last && self.rows > self.batch_start {
            return self.finish_batch().map(Some);
        }
        if last {
            // Free what the last call held.
            self.pending = Vec::new();
            self.at = 0;
        }
        Ok(None)
    }

    fn columns_bytes(&self) -> usize {
        match &self.columns {
            Columns::Text { fields, .. } => fields.iter().map(|b| b.values_slice().len()).sum(),
            Columns::Binary(columns) => columns.iter().map(BinaryColumn::memory).sum(),
        }
    }

    // ---- text ----

    /// Decodes one text-format line. False when no complete line is left.
    fn text_row(&mut self, last: bool) -> Result<bool> {
        let data = &self.pending[self.at..];
        let (raw, consumed) = match data.iter().position(|&b| b == b'\n') {
            Some(n) => (&data[..n], n + 1),
            None if last && !data.is_empty() => (data, data.len()),
            None => return Ok(false),
        };
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line_no = self.line;
        let place = Place::Line(line_no);
        let line = std::str::from_utf8(raw).map_err(|_| {
            copy_error(
                ErrorKind::CharacterNotInRepertoire,
                &self.what,
                place,
                "invalid byte sequence for encoding \"UTF8\"",
            )
        })?;
        let mut fields: Vec<Option<String>> = Vec::new();
        let end = line == "\\.";
        if !end {
            let delimiter = self.format.delimiter as char;
            if !line.contains('\\') {
                fields.extend(
                    line.split(delimiter)
                        .map(|f| (f != self.format.null).then(|| f.to_string())),
                );
            } else {
                for field in split_unescaped(line, delimiter) {
                    if field == self.format.null {
                        fields.push(None);
                    } else {
                        let value = unescape(&field).map_err(|m| {
                            copy_error(ErrorKind::InvalidTextRepresentation, &self.what, place, m)
                        })?;
                        fields.push(Some(value));
                    }
                }
            }
        }
        self.at += consumed;
        self.line += 1;
        if end {
            self.ended = true;
            return Ok(false);
        }
        if self.format.header && !self.started {
            self.started = true;
            return Ok(true);
        }
        self.started = true;
        self.push_text_row(fields, line_no)?;
        Ok(true)
    }

    /// Decodes one CSV record (quoted fields may span lines). False when no complete
    /// record is left.
    fn csv_row(&mut self, last: bool) -> Result<bool> {
        let (delimiter, quote, escape) =
            (self.format.delimiter, self.format.quote, self.format.escape);
        let data = &self.pending[self.at..];
        let line_no = self.line;
        let place = Place::Line(line_no);
        let mut fields: Vec<(Vec<u8>, bool)> = Vec::new();
        let mut field: Vec<u8> = Vec::new();
        let mut quoted = false;
        let mut in_quotes = false;
        let mut newlines = 0;
        let mut i = 0;
        let mut consumed = None;
        while i < data.len() {
            let c = data[i];
            i += 1;
            if in_quotes {
                if c == escape && escape != quote && i == data.len() && !last {
                    // An escaped quote may continue in the next message.
                    return Ok(false);
                }
                if c == escape && escape != quote && data.get(i) == Some(&quote) {
                    field.push(quote);
                    i += 1;
                } else if c == quote {
                    if escape == quote && data.get(i) == Some(&quote) {
                        field.push(quote);
                        i += 1;
                    } else if escape == quote && i == data.len() && !last {
                        // A doubled quote may continue in the next message.
                        return Ok(false);
                    } else {
                        in_quotes = false;
                    }
                } else {
                    if c == b'\n' {
                        newlines += 1;
                    }
                    field.push(c);
                }
                continue;
            }
            if c == quote {
                in_quotes = true;
                quoted = true;
            } else if c == delimiter {
                fields.push((std::mem::take(&mut field), quoted));
                quoted = false;
            } else if c == b'\r' && data.get(i) == Some(&b'\n') {
            } else if c == b'\r' && i == data.len() && !last {
                return Ok(false);
            } else if c == b'\n' {
                newlines += 1;
                consumed = Some(i);
                break;
            } else {
                field.push(c);
            }
        }
        let consumed = match consumed {
            Some(n) => n,
            None if !last => return Ok(false),
            None if in_quotes => {
                return Err(copy_error(
                    ErrorKind::BadCopyFileFormat,
                    &self.what,
                    place,
                    "unterminated CSV quoted field",
                ));
            }
            None if data.is_empty() => return Ok(false),
            None => data.len(),
        };
        self.at += consumed;
        self.line += newlines.max(1);
        let blank = fields.is_empty() && field.is_empty() && !quoted;
        if blank {
            return Ok(true);
        }
        fields.push((field, quoted));
        if fields.len() == 1 && !fields[0].1 && fields[0].0 == b"\\." {
            self.ended = true;
            return Ok(false);
        }
        let mut values = Vec::with_capacity(fields.len());
        for (bytes, quoted) in fields {
            let text = String::from_utf8(bytes).map_err(|_| {
                copy_error(
                    ErrorKind::CharacterNotInRepertoire,
                    &self.what,
                    place,
                    "invalid byte sequence for encoding \"UTF8\"",
                )
            })?;
            values.push((quoted || text != self.format.null).then_some(text));
        }
        if self.format.header && !self.started {
            self.started = true;
            return Ok(true);
        }
        self.started = true;
        self.push_text_row(values, line_no)?;
        Ok(true)
    }

    fn push_text_row(&mut self, values: Vec<Option<String>>, line: usize) -> Result<()> {
        let Columns::Text { lines, fields, .. } = &mut self.columns else {
            return Ok(());
        };
        if values.len() != fields.len() {
            let message = if values.len() < fields.len() {
                format!(
                    "missing data: expected {} fields, found {}",
                    fields.len(),
                    values.len()
                )
            } else {
                format!(
                    "extra data: expected {} fields, found {}",
                    fields.len(),
                    values.len()
                )
            };
            return Err(copy_error(
                ErrorKind::BadCopyFileFormat,
                &self.what,
                Place::Line(line),
                message,
            ));
        }
        for (builder, value) in fields.iter_mut().zip(values) {
            builder.append_option(value);
        }
        lines.push(line);
        self.rows += 1;
        Ok(())
    }

    // ---- binary ----

    /// Decodes the binary header or one tuple. False at the trailer or when no complete
    /// tuple is left.
    fn binary_row(&mut self, last: bool) -> Result<bool> {
        let row = self.rows + 1;
        let data = &self.pending[self.at..];
        let truncated = |what: &str| {
            copy_error(
                ErrorKind::BadCopyFileFormat,
                what,
                Place::Row(row),
                "unexpected end of the COPY data",
            )
        };
        if !self.started {
            if data.len() < 19 {
                if last && !data.is_empty() {
                    return Err(tessera_error(
                        ErrorKind::BadCopyFileFormat,
                        format!("COPY {}: the binary header is cut short", self.what),
                    ));
                }
                return Ok(false);
            }
            if &data[..11] != BINARY_SIGNATURE {
                return Err(tessera_error(
                    ErrorKind::BadCopyFileFormat,
                    format!(
                        "COPY {}: the binary COPY signature (PGCOPY\\n\\377\\r\\n\\0) is missing",
                        self.what
                    ),
                ));
            }
            let flags = read_u32(data, 11);
            if flags & (1 << 16) != 0 {
                return Err(tessera_error(
                    ErrorKind::BadCopyFileFormat,
                    format!("COPY {}: binary COPY with OIDs is not supported", self.what),
                ));
            }
            if flags & 0xFFFE_0000 != 0 {
                return Err(tessera_error(
                    ErrorKind::BadCopyFileFormat,
                    format!(
                        "COPY {}: unrecognized critical flags in the binary header",
                        self.what
                    ),
                ));
            }
            let extension = read_u32(data, 15) as usize;
            let Some(end) = 19usize.checked_add(extension).filter(|&e| e <= data.len()) else {
                if last {
                    return Err(truncated(&self.what));
                }
                return Ok(false);
            };
            self.at += end;
            self.started = true;
            return Ok(true);
        }
        if data.len() < 2 {
            if last && !data.is_empty() {
                return Err(truncated(&self.what));
            }
            return Ok(false);
        }
        let count = i16::from_be_bytes([data[0], data[1]]);
        if count == -1 {
            self.at += 2;
            self.ended = true;
            return Ok(false);
        }
        let Columns::Binary(columns) = &mut self.columns else {
            return Ok(false);
        };
        if count < 0 || count as usize != columns.len() {
            return Err(copy_error(
                ErrorKind::BadCopyFileFormat,
                &self.what,
                Place::Row(row),
                format!("expected {} fields, found {count}", columns.len()),
            ));
        }
        // The whole tuple must be here before any of it is decoded.
        let mut spans: Vec<Option<(usize, usize)>> = Vec::with_capacity(columns.len());
        let mut at = 2usize;
        for k in 0..columns.len() {
            let Some(len) = data.get(at..at + 4) else {
                if last {
                    return Err(truncated(&self.what));
                }
                return Ok(false);
            };
            let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            at += 4;
            if len == -1 {
                spans.push(None);
                continue;
            }
            if len < 0 {
                return Err(copy_error(
                    ErrorKind::BadCopyFileFormat,
                    &self.what,
                    Place::Row(row),
                    format!("field {} has the invalid length {len}", k + 1),
                ));
            }
            let end = at + len as usize;
            if end > data.len() {
                if last {
                    return Err(truncated(&self.what));
                }
                return Ok(false);
            }
            spans.push(Some((at, end)));
            at = end;
        }
        for (k, (column, span)) in columns.iter_mut().zip(&spans).enumerate() {
            let value = span.map(|(s, e)| &data[s..e]);
            column.push(value).map_err(|m| {
                field_error(
                    ErrorKind::InvalidBinaryRepresentation,
                    &self.what,
                    row,
                    k,
                    &column.name,
                    m,
                )
            })?;
        }
        self.at += at;
        self.rows += 1;
        Ok(true)
    }

    // ---- batches ----

    fn finish_batch(&mut self) -> Result<RecordBatch> {
        let n = (self.rows - self.batch_start) as usize;
        let first_row = self.batch_start + 1;
        self.batch_start = self.rows;
        let mut arrays: Vec<ArrayRef> = self
            .schema
            .fields()
            .iter()
            .map(|f| new_null_array(f.data_type(), n))
            .collect();
        let options = CastOptions {
            safe: true,
            ..CastOptions::default()
        };
        let what = self.what.clone();
        match &mut self.columns {
            Columns::Text { lines, fields, .. } => {
                let lines = std::mem::take(lines);
                for (k, builder) in fields.iter_mut().enumerate() {
                    let target = self.targets[k];
                    let field = self.schema.field(target);
                    let text: StringArray = builder.finish();
                    let typed = cast_with_options(&text, field.data_type(), &options)?;
                    // A value that was given but did not read as the type is now NULL.
                    if typed.null_count() != text.null_count()
                        && let Some(r) = (0..n).find(|&r| typed.is_null(r) && !text.is_null(r))
                    {
                        return Err(copy_error(
                            ErrorKind::InvalidTextRepresentation,
                            &what,
                            Place::Line(lines[r]),
                            format!(
                                "invalid input syntax for type {} in column {}: \"{}\"",
                                field.data_type(),
                                field.name(),
                                text.value(r)
                            ),
                        ));
                    }
                    arrays[target] = typed;
                }
                self.check_not_null(&arrays, |r| Place::Line(lines[r]))?;
            }
            Columns::Binary(columns) => {
                for (k, column) in columns.iter_mut().enumerate() {
                    let target = self.targets[k];
                    let field = self.schema.field(target);
                    let raw = column.finish();
                    let typed = cast_with_options(&raw, field.data_type(), &options)?;
                    if typed.null_count() != raw.null_count()
                        && let Some(r) = (0..n).find(|&r| typed.is_null(r) && !raw.is_null(r))
                    {
                        return Err(field_error(
                            ErrorKind::NumericOutOfRange,
                            &what,
                            first_row + r as u64,
                            k,
                            field.name(),
                            format!("the value does not fit in {}", field.data_type()),
                        ));
                    }
                    arrays[target] = typed;
                }
                self.check_not_null(&arrays, |r| Place::Row(first_row + r as u64))?;
            }
        }
        Ok(RecordBatch::try_new(self.schema.clone(), arrays)?)
    }

    fn check_not_null(&self, arrays: &[ArrayRef], place: impl Fn(usize) -> Place) -> Result<()> {
        for (target, array) in arrays.iter().enumerate() {
            if array.null_count() == 0 || !self.required[target] {
                continue;
            }
            if let Some(r) = (0..array.len()).find(|&r| array.is_null(r)) {
                return Err(copy_error(
                    ErrorKind::NotNullViolation,
                    &self.what,
                    place(r),
                    format!(
                        "NULL in column {}, which does not allow NULLs",
                        self.schema.field(target).name()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// What the connection sends the writer of a `COPY ... FROM STDIN`.
pub(crate) enum CopyChunk {
    /// Decoded rows, with their memory charged until the writer asks for the next.
    Batch(RecordBatch, MemoryReservation),
    /// CopyDone: the data are complete and may be committed.
    End,
}

/// The rows of a `COPY ... FROM STDIN` as the one partition of the table the INSERT
/// reads, fed by the connection. If the connection stops feeding it without
/// [`CopyChunk::End`] (CopyFail, a bad row, a dropped connection), the stream fails, so
/// the INSERT commits nothing.
#[derive(Debug)]
pub(crate) struct CopyRows {
    schema: SchemaRef,
    receiver: Mutex<Option<Receiver<CopyChunk>>>,
}

impl CopyRows {
    pub(crate) fn new(schema: SchemaRef, receiver: Receiver<CopyChunk>) -> Self {
        CopyRows {
            schema,
            receiver: Mutex::new(Some(receiver)),
        }
    }
}

impl PartitionStream for CopyRows {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let receiver = self
            .receiver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let rows = futures::stream::unfold(
            receiver.map(|r| (r, None::<MemoryReservation>)),
            |state| async move {
                let (mut receiver, held) = state?;
                // The batch handed on last is written by now.
                drop(held);
                match receiver.recv().await {
                    Some(CopyChunk::Batch(batch, reservation)) => {
                        Some((Ok(batch), Some((receiver, Some(reservation)))))
                    }
                    Some(CopyChunk::End) => None,
                    None => Some((
                        Err(exec_datafusion_err!("the COPY data ended without CopyDone")),
                        None,
                    )),
                }
            },
        );
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), rows))
    }
}

fn read_u32(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

/// One column of a binary COPY, read as the PostgreSQL type its Arrow type is sent as
/// (see `types.rs`) and cast to the column's type when its batch is finished.
struct BinaryColumn {
    name: String,
    values: BinaryValues,
}

enum BinaryValues {
    Bool(BooleanBuilder),
    /// int2, int4 or int8, told apart by their length.
    Int(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Text(StringBuilder),
    Bytes(BinaryBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
    /// numeric, as its decimal text.
    Numeric(StringBuilder),
}

impl BinaryColumn {
    fn new(field: &Field, what: &str) -> Result<Self> {
        let values = match field.data_type() {
            DataType::Boolean => BinaryValues::Bool(BooleanBuilder::new()),
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64 => BinaryValues::Int(Int64Builder::new()),
            DataType::Float16 | DataType::Float32 => BinaryValues::Float32(Float32Builder::new()),
            DataType::Float64 => BinaryValues::Float64(Float64Builder::new()),
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => {
                BinaryValues::Text(StringBuilder::new())
            }
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
                BinaryValues::Bytes(BinaryBuilder::new())
            }
            DataType::Date32 | DataType::Date64 => BinaryValues::Date(Date32Builder::new()),
            DataType::Timestamp(_, tz) => BinaryValues::Timestamp(
                TimestampMicrosecondBuilder::new().with_timezone_opt(tz.clone()),
            ),
            DataType::Decimal128(..) | DataType::Decimal256(..) => {
                BinaryValues::Numeric(StringBuilder::new())
            }
            other => {
                return Err(tessera_error(
                    ErrorKind::FeatureNotSupported,
                    format!(
                        "COPY {what} FROM STDIN (FORMAT binary): column {} has type {other}, which binary COPY does not read",
                        field.name()
                    ),
                ));
            }
        };
        Ok(BinaryColumn {
            name: field.name().clone(),
            values,
        })
    }

    /// Appends one field (`None`: NULL).
    fn push(&mut self, bytes: Option<&[u8]>) -> Result<(), String> {
        fn fixed<const N: usize>(bytes: &[u8], ty: &str) -> Result<[u8; N], String> {
            bytes
                .try_into()
                .map_err(|_| format!("a {ty} takes {N} bytes, got {}", bytes.len()))
        }
        let Some(bytes) = bytes else {
            match &mut self.values {
                BinaryValues::Bool(b) => b.append_null(),
                BinaryValues::Int(b) => b.append_null(),
                BinaryValues::Float32(b) => b.append_null(),
                BinaryValues::Float64(b) => b.append_null(),
                BinaryValues::Text(b) | BinaryValues::Numeric(b) => b.append_null(),
                BinaryValues::Bytes(b) => b.append_null(),
                BinaryValues::Date(b) => b.append_null(),
                BinaryValues::Timestamp(b) => b.append_null(),
            }
            return Ok(());
        };
        match &mut self.values {
            BinaryValues::Bool(b) => b.append_value(fixed::<1>(bytes, "bool")?[0] != 0),
            BinaryValues::Int(b) => b.append_value(match bytes.len() {
                2 => i16::from_be_bytes(fixed(bytes, "int2")?) as i64,
                4 => i32::from_be_bytes(fixed(bytes, "int4")?) as i64,
                8 => i64::from_be_bytes(fixed(bytes, "int8")?),
                n => return Err(format!("an integer takes 2, 4 or 8 bytes, got {n}")),
            }),
            BinaryValues::Float32(b) => b.append_value(f32::from_be_bytes(fixed(bytes, "float4")?)),
            BinaryValues::Float64(b) => b.append_value(f64::from_be_bytes(fixed(bytes, "float8")?)),
            BinaryValues::Text(b) => b.append_value(
                std::str::from_utf8(bytes)
                    .map_err(|_| "invalid byte sequence for encoding \"UTF8\"".to_string())?,
            ),
            BinaryValues::Bytes(b) => b.append_value(bytes),
            BinaryValues::Date(b) => {
                let days = i32::from_be_bytes(fixed(bytes, "date")?) as i64 + PG_EPOCH_DAYS;
                b.append_value(i32::try_from(days).map_err(|_| "date out of range".to_string())?)
            }
            BinaryValues::Timestamp(b) => b.append_value(
                i64::from_be_bytes(fixed(bytes, "timestamp")?)
                    .checked_add(PG_EPOCH_MICROS)
                    .ok_or("timestamp out of range")?,
            ),
            BinaryValues::Numeric(b) => {
                b.append_value(numeric_text(bytes).ok_or("a malformed binary numeric")?)
            }
        }
        Ok(())
    }

    fn builder(&self) -> &dyn ArrayBuilder {
        match &self.values {
            BinaryValues::Bool(b) => b,
            BinaryValues::Int(b) => b,
            BinaryValues::Float32(b) => b,
            BinaryValues::Float64(b) => b,
            BinaryValues::Text(b) | BinaryValues::Numeric(b) => b,
            BinaryValues::Bytes(b) => b,
            BinaryValues::Date(b) => b,
            BinaryValues::Timestamp(b) => b,
        }
    }

    fn memory(&self) -> usize {
        match &self.values {
            BinaryValues::Text(b) | BinaryValues::Numeric(b) => {
                b.values_slice().len() + b.offsets_slice().len() * 4
            }
            BinaryValues::Bytes(b) => b.values_slice().len() + b.offsets_slice().len() * 4,
            BinaryValues::Bool(_) => self.builder().len() / 8 + 1,
            _ => self.builder().len() * 8,
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match &mut self.values {
            BinaryValues::Bool(b) => Arc::new(b.finish()),
            BinaryValues::Int(b) => Arc::new(b.finish()),
            BinaryValues::Float32(b) => Arc::new(b.finish()),
            BinaryValues::Float64(b) => Arc::new(b.finish()),
            BinaryValues::Text(b) | BinaryValues::Numeric(b) => Arc::new(b.finish()),
            BinaryValues::Bytes(b) => Arc::new(b.finish()),
            BinaryValues::Date(b) => Arc::new(b.finish()),
            BinaryValues::Timestamp(b) => Arc::new(b.finish()),
        }
    }
}

/// Splits at delimiters not preceded by a backslash escape; fields stay escaped.
fn split_unescaped(line: &str, delimiter: char) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(last) = fields.last_mut() {
                last.push('\\');
                if let Some(next) = chars.next() {
                    last.push(next);
                }
            }
        } else if c == delimiter {
            fields.push(String::new());
        } else if let Some(last) = fields.last_mut() {
            last.push(c);
        }
    }
    fields
}

/// PostgreSQL text-format escapes: `\b \f \n \r \t \v \\`, octal `\ooo`, hex `\xhh`.
fn unescape(field: &str) -> Result<String, String> {
    if !field.contains('\\') {
        return Ok(field.to_string());
    }
    let mut out = String::with_capacity(field.len());
    let chars: Vec<char> = field.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some(&e) = chars.get(i) else {
            return Err("a backslash ends the field".into());
        };
        i += 1;
        match e {
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'v' => out.push('\u{b}'),
            'x' => {
                let hex: String = chars[i..]
                    .iter()
                    .take(2)
                    .take_while(|c| c.is_ascii_hexdigit())
                    .collect();
                i += hex.len();
                match u8::from_str_radix(&hex, 16) {
                    Ok(b) => out.push(b as char),
                    Err(_) => out.push('x'),
                }
            }
            '0'..='7' => {
                let mut digits = e.to_string();
                while digits.len() < 3 && chars.get(i).is_some_and(|c| ('0'..='7').contains(c)) {
                    digits.push(chars[i]);
                    i += 1;
                }
                let value = u32::from_str_radix(&digits, 8).unwrap_or(0);
                out.push(char::from_u32(value).unwrap_or('\u{fffd}'));
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

/// Encodes one row of `batch` as a COPY text or CSV line.
pub(crate) fn encode_row(out: &mut BytesMut, batch: &RecordBatch, row: usize, format: &CopyFormat) {
    for (c, column) in batch.columns().iter().enumerate() {
        if c > 0 {
            out.put_u8(format.delimiter);
        }
        if column.is_null(row) || column.data_type() == &DataType::Null {
            out.put_slice(format.null.as_bytes());
            continue;
        }
        let mut value = BytesMut::new();
        encode_text(&mut value, column.as_ref(), row);
        put_escaped(out, &value, format);
    }
    out.put_u8(b'\n');
}

/// The header line of a COPY TO with `HEADER`.
pub(crate) fn encode_header(out: &mut BytesMut, schema: &Schema, format: &CopyFormat) {
    for (c, field) in schema.fields().iter().enumerate() {
        if c > 0 {
            out.put_u8(format.delimiter);
        }
        put_escaped(out, field.name().as_bytes(), format);
    }
    out.put_u8(b'\n');
}

fn put_escaped(out: &mut BytesMut, value: &[u8], format: &CopyFormat) {
    if format.csv {
        let needs_quotes = value.is_empty()
            || value == format.null.as_bytes()
            || value
                .iter()
                .any(|&b| b == format.delimiter || b == format.quote || b == b'\n' || b == b'\r');
        if !needs_quotes {
            out.put_slice(value);
            return;
        }
        out.put_u8(format.quote);
        for &b in value {
            if b == format.quote || b == format.escape {
                out.put_u8(format.escape);
            }
            out.put_u8(b);
        }
        out.put_u8(format.quote);
    } else {
        for &b in value {
            match b {
                b'\\' => out.put_slice(b"\\\\"),
                b'\n' => out.put_slice(b"\\n"),
                b'\r' => out.put_slice(b"\\r"),
                b'\t' if format.delimiter == b'\t' => out.put_slice(b"\\t"),
                b if b == format.delimiter => {
                    out.put_u8(b'\\');
                    out.put_u8(b);
                }
                b => out.put_u8(b),
            }
        }
    }
}

/// The header of a binary COPY TO: signature, flags (no OIDs), no header extension.
pub(crate) fn encode_binary_header(out: &mut BytesMut) {
    out.put_slice(BINARY_SIGNATURE);
    out.put_i32(0);
    out.put_i32(0);
}

/// Encodes one row of `batch` as a binary COPY tuple: its field count, then each field's
/// length and binary value (length -1 for NULL).
pub(crate) fn encode_binary_row(out: &mut BytesMut, batch: &RecordBatch, row: usize) {
    out.put_i16(batch.num_columns() as i16);
    for column in batch.columns() {
        encode_field(out, column.as_ref(), row, FieldFormat::Binary);
    }
}

/// The trailer that ends a binary COPY.
pub(crate) fn encode_binary_trailer(out: &mut BytesMut) {
    out.put_i16(-1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{Float64Type, Int32Type, Int64Type};

    fn format(sql: &str) -> CopyFormat {
        match super::super::statement::classify(tessera_planner::ddl::parse(sql).unwrap().remove(0))
            .unwrap()
        {
            super::super::statement::Command::CopyIn { format, .. } => format,
            _ => unreachable!(),
        }
    }

    fn text() -> CopyFormat {
        format("COPY t FROM STDIN")
    }

    fn csv() -> CopyFormat {
        format("COPY t FROM STDIN WITH (FORMAT csv)")
    }

    fn binary() -> CopyFormat {
        format("COPY t FROM STDIN WITH (FORMAT binary)")
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("i", DataType::Int64, false),
            Field::new("v", DataType::Float64, true),
            Field::new("s", DataType::Utf8, true),
        ]))
    }

    /// Feeds `data` in pieces of `piece` bytes, as a client's messages may cut it, and
    /// gathers the batches (two rows each).
    fn decode_in_pieces(data: &[u8], format: &CopyFormat, piece: usize) -> Result<RecordBatch> {
        let mut decoder = CopyDecoder::new("t", format, &schema(), &[], 2)?;
        let mut batches = Vec::new();
        for chunk in data.chunks(piece.max(1)) {
            decoder.extend(chunk);
            while let Some(b) = decoder.next_batch(false)? {
                assert!(b.num_rows() <= 2);
                batches.push(b);
            }
        }
        while let Some(b) = decoder.next_batch(true)? {
            batches.push(b);
        }
        Ok(datafusion::arrow::compute::concat_batches(
            &decoder.schema(),
            &batches,
        )?)
    }

    fn decode(data: &[u8], format: &CopyFormat) -> Result<RecordBatch> {
        let whole = decode_in_pieces(data, format, data.len())?;
        for piece in [1, 2, 3, 7] {
            assert_eq!(
                decode_in_pieces(data, format, piece)?,
                whole,
                "pieces of {piece}"
            );
        }
        Ok(whole)
    }

    #[test]
    fn text_rows_parse_with_escapes_and_nulls() {
        let batch = decode(b"1\t2.5\ta\\tb\n2\t\\N\t\\\\\n3\t4\tc", &text()).unwrap();
        assert_eq!(
            batch.column(0).as_primitive::<Int64Type>().values(),
            &[1, 2, 3]
        );
        assert_eq!(batch.column(1).as_primitive::<Float64Type>().value(0), 2.5);
        assert!(batch.column(1).is_null(1));
        assert_eq!(batch.column(2).as_string::<i32>().value(0), "a\tb");
        assert_eq!(batch.column(2).as_string::<i32>().value(1), "\\");
        assert_eq!(batch.column(2).as_string::<i32>().value(2), "c");
        // The end marker ends the data.
        assert_eq!(decode(b"1\t1\tx\n\\.\n", &text()).unwrap().num_rows(), 1);
    }

    #[test]
    fn csv_rows_parse_with_quotes() {
        let batch = decode(b"1,2.5,\"a,\"\"b\"\"\nc\"\r\n2,,\"\"\n", &csv()).unwrap();
        assert_eq!(batch.column(2).as_string::<i32>().value(0), "a,\"b\"\nc");
        assert!(batch.column(1).is_null(1));
        assert_eq!(batch.column(2).as_string::<i32>().value(1), "");
        // Round trip through the encoder.
        let mut out = BytesMut::new();
        for r in 0..batch.num_rows() {
            encode_row(&mut out, &batch, r, &csv());
        }
        assert_eq!(&out[..], b"1,2.5,\"a,\"\"b\"\"\nc\"\n2,,\"\"\n");
        let header = format("COPY t FROM STDIN WITH (FORMAT csv, HEADER true)");
        assert_eq!(decode(b"i,v,s\n1,2,x\n", &header).unwrap().num_rows(), 1);
    }

    #[test]
    fn a_bad_value_names_its_line() {
        let e = decode(b"1\t1.0\tx\n2\tabc\ty\n", &text()).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        assert_eq!(
            crate::errors::sqlstate(&e),
            crate::errors::INVALID_TEXT_REPRESENTATION
        );
        let e = decode(b"1\t1.0\n", &text()).unwrap_err();
        assert!(e.to_string().contains("line 1: missing data"), "{e}");
        assert_eq!(
            crate::errors::sqlstate(&e),
            crate::errors::BAD_COPY_FILE_FORMAT
        );
        // A quoted field's newlines count: the bad row starts on line 3.
        let e = decode(b"1,1,\"a\nb\"\nx,2,c\n", &csv()).unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
        let e = decode(b"\\N\t1\tx\n", &text()).unwrap_err();
        assert_eq!(
            crate::errors::sqlstate(&e),
            crate::errors::NOT_NULL_VIOLATION
        );
        let e = decode(b"1,1,\"open\n", &csv()).unwrap_err();
        assert!(e.to_string().contains("unterminated"), "{e}");
    }

    /// Binary COPY data, as PostgreSQL writes them (worked by hand).
    fn binary_data(rows: &[(Option<i64>, Option<f64>, Option<&str>)]) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_binary_header(&mut out);
        for (i, v, s) in rows {
            out.put_i16(3);
            match i {
                Some(i) => {
                    out.put_i32(8);
                    out.put_i64(*i);
                }
                None => out.put_i32(-1),
            }
            match v {
                Some(v) => {
                    out.put_i32(8);
                    out.put_f64(*v);
                }
                None => out.put_i32(-1),
            }
            match s {
                Some(s) => {
                    out.put_i32(s.len() as i32);
                    out.put_slice(s.as_bytes());
                }
                None => out.put_i32(-1),
            }
        }
        encode_binary_trailer(&mut out);
        out.to_vec()
    }

    #[test]
    fn binary_rows_round_trip() {
        let rows = [
            (Some(1), Some(2.5), Some("a")),
            (Some(-7), None, None),
            (Some(i64::MAX), Some(-0.0), Some("é\t\n")),
        ];
        let data = binary_data(&rows);
        assert_eq!(&data[..11], b"PGCOPY\n\xff\r\n\0");
        let batch = decode(&data, &binary()).unwrap();
        assert_eq!(
            batch.column(0).as_primitive::<Int64Type>().values(),
            &[1, -7, i64::MAX]
        );
        assert!(batch.column(1).is_null(1));
        assert_eq!(batch.column(2).as_string::<i32>().value(2), "é\t\n");
        // Encoding the batch gives the same bytes back.
        let mut out = BytesMut::new();
        encode_binary_header(&mut out);
        for r in 0..batch.num_rows() {
            encode_binary_row(&mut out, &batch, r);
        }
        encode_binary_trailer(&mut out);
        assert_eq!(out.to_vec(), data);
    }

    #[test]
    fn binary_integers_widen_and_narrow_by_length() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int32, true)]));
        let mut data = BytesMut::new();
        encode_binary_header(&mut data);
        for (len, value) in [(2, 5i64), (4, -6), (8, 7)] {
            data.put_i16(1);
            data.put_i32(len);
            match len {
                2 => data.put_i16(value as i16),
                4 => data.put_i32(value as i32),
                _ => data.put_i64(value),
            }
        }
        encode_binary_trailer(&mut data);
        let mut decoder = CopyDecoder::new("t", &binary(), &schema, &[], 10).unwrap();
        decoder.extend(&data);
        let batch = decoder.next_batch(true).unwrap().unwrap();
        assert_eq!(
            batch.column(0).as_primitive::<Int32Type>().values(),
            &[5, -6, 7]
        );
        // An int8 that does not fit an INT column names its row.
        let mut data = BytesMut::new();
        encode_binary_header(&mut data);
        data.put_i16(1);
        data.put_i32(8);
        data.put_i64(1 << 40);
        encode_binary_trailer(&mut data);
        let mut decoder = CopyDecoder::new("t", &binary(), &schema, &[], 10).unwrap();
        decoder.extend(&data);
        let e = decoder.next_batch(true).unwrap_err();
        assert!(e.to_string().contains("row 1, field 1 (x)"), "{e}");
        assert_eq!(
            crate::errors::sqlstate(&e),
            crate::errors::NUMERIC_VALUE_OUT_OF_RANGE
        );
    }

    #[test]
    fn bad_binary_data_name_their_row_and_field() {
        let mut data = binary_data(&[(Some(1), Some(1.0), Some("a")), (Some(2), None, None)]);
        // Row 2's float field (after the count and the int8 field) takes 4 bytes.
        let good = binary_data(&[(Some(1), Some(1.0), Some("a"))]);
        let row2 = good.len() - 2;
        data.truncate(row2);
        data.extend_from_slice(&3i16.to_be_bytes());
        data.extend_from_slice(&8i32.to_be_bytes());
        data.extend_from_slice(&2i64.to_be_bytes());
        data.extend_from_slice(&3i32.to_be_bytes());
        data.extend_from_slice(b"abc");
        data.extend_from_slice(&(-1i32).to_be_bytes());
        data.extend_from_slice(&(-1i16).to_be_bytes());
        let e = decode(&data, &binary()).unwrap_err();
        assert!(e.to_string().contains("row 2, field 2 (v)"), "{e}");
        assert_eq!(
            crate::errors::sqlstate(&e),
            crate::errors::INVALID_BINARY_REPRESENTATION
        );
        let e = decode(b"PGCOPY\nxx", &binary()).unwrap_err();
        assert_eq!(
            crate::errors::sqlstate(&e),
            crate::errors::BAD_COPY_FILE_FORMAT
        );
        // Data cut inside a tuple.
        let mut cut = binary_data(&[(Some(1), Some(1.0), Some("abc"))]);
        cut.truncate(cut.len() - 4);
        let e = decode(&cut, &binary()).unwrap_err();
        assert!(e.to_string().contains("row 1"), "{e}");
        assert_eq!(
            crate::errors::sqlstate(&e),
            crate::errors::BAD_COPY_FILE_FORMAT
        );
        // A wrong field count.
        let mut wrong = BytesMut::new();
        encode_binary_header(&mut wrong);
        wrong.put_i16(2);
        let e = decode(&wrong, &binary()).unwrap_err();
        assert!(
            e.to_string().contains("row 1: expected 3 fields, found 2"),
            "{e}"
        );
    }
}
