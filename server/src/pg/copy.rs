//! `COPY ... FROM STDIN` and `COPY ... TO STDOUT` in PostgreSQL's text and CSV formats.
//!
//! In: the client's data is gathered, split into rows (each with its line number), every
//! column read as its type, and the whole set inserted with one `INSERT`, so a bad line
//! commits nothing and the error names the line. Out: each row is one CopyData message.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray, new_null_array};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{DataFusionError, Result};

use tessera_planner::{ErrorKind, tessera_error};

use super::statement::CopyFormat;
use super::types::encode_text;

/// One parsed input row: its line number and its fields (`None` for NULL).
pub(crate) struct CopyRow {
    pub(crate) line: usize,
    pub(crate) fields: Vec<Option<String>>,
}

fn bad_input(what: &str, line: usize, message: impl std::fmt::Display) -> DataFusionError {
    tessera_error(
        ErrorKind::InvalidTextRepresentation,
        format!("COPY {what}, line {line}: {message}"),
    )
}

/// Splits COPY data into rows.
pub(crate) fn parse_rows(data: &[u8], format: &CopyFormat, what: &str) -> Result<Vec<CopyRow>> {
    let text = std::str::from_utf8(data).map_err(|e| {
        let line = data[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        bad_input(what, line, "invalid UTF-8")
    })?;
    let mut rows = if format.csv {
        parse_csv(text, format, what)?
    } else {
        parse_text(text, format, what)?
    };
    if format.header && !rows.is_empty() {
        rows.remove(0);
    }
    Ok(rows)
}

fn parse_text(text: &str, format: &CopyFormat, what: &str) -> Result<Vec<CopyRow>> {
    let delimiter = format.delimiter as char;
    let mut rows = Vec::new();
    for (n, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line == "\\." {
            break;
        }
        if line.is_empty() && n + 1 == text.split('\n').count() {
            break;
        }
        let mut fields = Vec::new();
        for field in split_unescaped(line, delimiter) {
            if field == format.null {
                fields.push(None);
            } else {
                fields.push(Some(
                    unescape(&field).map_err(|m| bad_input(what, n + 1, m))?,
                ));
            }
        }
        rows.push(CopyRow {
            line: n + 1,
            fields,
        });
    }
    Ok(rows)
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

fn parse_csv(text: &str, format: &CopyFormat, what: &str) -> Result<Vec<CopyRow>> {
    let (delimiter, quote, escape) = (
        format.delimiter as char,
        format.quote as char,
        format.escape as char,
    );
    let mut rows = Vec::new();
    let mut fields: Vec<Option<String>> = Vec::new();
    let mut field = String::new();
    let mut quoted = false; // the current field had quotes (so it is not NULL)
    let mut in_quotes = false;
    let mut line = 1;
    let mut row_line = 1;
    let mut chars = text.chars().peekable();
    let finish_field = |fields: &mut Vec<Option<String>>, field: &mut String, quoted: &mut bool| {
        let value = std::mem::take(field);
        if !*quoted && value == format.null {
            fields.push(None);
        } else {
            fields.push(Some(value));
        }
        *quoted = false;
    };
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == escape && escape != quote && chars.peek() == Some(&quote) {
                field.push(quote);
                chars.next();
            } else if c == quote {
                if escape == quote && chars.peek() == Some(&quote) {
                    field.push(quote);
                    chars.next();
                } else {
                    in_quotes = false;
                }
            } else {
                if c == '\n' {
                    line += 1;
                }
                field.push(c);
            }
            continue;
        }
        match c {
            c if c == quote => {
                in_quotes = true;
                quoted = true;
            }
            c if c == delimiter => finish_field(&mut fields, &mut field, &mut quoted),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                if !(fields.is_empty() && field.is_empty() && !quoted) {
                    finish_field(&mut fields, &mut field, &mut quoted);
                    if fields.len() == 1 && fields[0].as_deref() == Some("\\.") {
                        return Ok(rows);
                    }
                    rows.push(CopyRow {
                        line: row_line,
                        fields: std::mem::take(&mut fields),
                    });
                }
                line += 1;
                row_line = line;
            }
            c => field.push(c),
        }
    }
    if in_quotes {
        return Err(bad_input(what, row_line, "unterminated CSV quoted field"));
    }
    if !fields.is_empty() || !field.is_empty() || quoted {
        finish_field(&mut fields, &mut field, &mut quoted);
        if !(fields.len() == 1 && fields[0].as_deref() == Some("\\.")) {
            rows.push(CopyRow {
                line: row_line,
                fields,
            });
        }
    }
    Ok(rows)
}

/// The rows as a batch of `schema` (the target's columns), with `columns` the
/// columns the input holds, in order (all of them when empty). A value that cannot be
/// read as its column's type is an error naming its line and column.
pub(crate) fn rows_to_batch(
    rows: &[CopyRow],
    schema: &SchemaRef,
    columns: &[String],
    what: &str,
) -> Result<RecordBatch> {
    let targets: Vec<usize> = if columns.is_empty() {
        (0..schema.fields().len()).collect()
    } else {
        columns
            .iter()
            .map(|c| {
                schema
                    .index_of(c)
                    .map_err(|_| DataFusionError::Plan(format!("COPY {what}: no column \"{c}\"")))
            })
            .collect::<Result<_>>()?
    };
    for row in rows {
        if row.fields.len() != targets.len() {
            return Err(bad_input(
                what,
                row.line,
                format!(
                    "expected {} fields, found {}",
                    targets.len(),
                    row.fields.len()
                ),
            ));
        }
    }
    let mut arrays: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| new_null_array(f.data_type(), rows.len()))
        .collect();
    let options = CastOptions {
        safe: true,
        ..CastOptions::default()
    };
    for (k, &target) in targets.iter().enumerate() {
        let field = schema.field(target);
        let text: StringArray = rows.iter().map(|r| r.fields[k].as_deref()).collect();
        let typed = cast_with_options(&text, &text_cast_type(field.data_type()), &options)?;
        let typed = if typed.data_type() != field.data_type() {
            cast_with_options(&typed, field.data_type(), &options)?
        } else {
            typed
        };
        // A value that was given but did not read as the type is now NULL.
        if typed.null_count() != text.null_count()
            && let Some(row) = (0..rows.len()).find(|&r| typed.is_null(r) && !text.is_null(r))
        {
            {
                return Err(bad_input(
                    what,
                    rows[row].line,
                    format!(
                        "invalid input syntax for type {} in column {}: \"{}\"",
                        field.data_type(),
                        field.name(),
                        text.value(row)
                    ),
                ));
            }
        }
        if !field.is_nullable()
            && typed.null_count() > 0
            && let Some(row) = (0..rows.len()).find(|&r| typed.is_null(r))
        {
            {
                return Err(bad_input(
                    what,
                    rows[row].line,
                    format!(
                        "NULL in column {}, which does not allow NULLs",
                        field.name()
                    ),
                ));
            }
        }
        arrays[target] = typed;
    }
    let nullable_schema = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), f.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    Ok(RecordBatch::try_new(nullable_schema, arrays)?)
}

/// Text is read through this type first (booleans and numbers as PostgreSQL writes
/// them, e.g. `t` / `f`).
fn text_cast_type(target: &DataType) -> DataType {
    target.clone()
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

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{Float64Type, Int64Type};

    fn format(csv: bool) -> CopyFormat {
        let sql = if csv {
            "COPY t FROM STDIN WITH (FORMAT csv)"
        } else {
            "COPY t FROM STDIN"
        };
        match super::super::statement::classify(tessera_planner::ddl::parse(sql).unwrap().remove(0))
            .unwrap()
        {
            super::super::statement::Command::CopyIn { format, .. } => format,
            _ => unreachable!(),
        }
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("i", DataType::Int64, false),
            Field::new("v", DataType::Float64, true),
            Field::new("s", DataType::Utf8, true),
        ]))
    }

    #[test]
    fn text_rows_parse_with_escapes_and_nulls() {
        let rows = parse_rows(b"1\t2.5\ta\\tb\n2\t\\N\t\\\\\n", &format(false), "t").unwrap();
        let batch = rows_to_batch(&rows, &schema(), &[], "t").unwrap();
        assert_eq!(
            batch.column(0).as_primitive::<Int64Type>().values(),
            &[1, 2]
        );
        assert_eq!(batch.column(1).as_primitive::<Float64Type>().value(0), 2.5);
        assert!(batch.column(1).is_null(1));
        assert_eq!(batch.column(2).as_string::<i32>().value(0), "a\tb");
        assert_eq!(batch.column(2).as_string::<i32>().value(1), "\\");
    }

    #[test]
    fn csv_rows_parse_with_quotes() {
        let rows =
            parse_rows(b"1,2.5,\"a,\"\"b\"\"\nc\"\r\n2,,\"\"\n", &format(true), "t").unwrap();
        let batch = rows_to_batch(&rows, &schema(), &[], "t").unwrap();
        assert_eq!(batch.column(2).as_string::<i32>().value(0), "a,\"b\"\nc");
        assert!(batch.column(1).is_null(1));
        assert_eq!(batch.column(2).as_string::<i32>().value(1), "");
        // Round trip through the encoder.
        let mut out = BytesMut::new();
        for r in 0..batch.num_rows() {
            encode_row(&mut out, &batch, r, &format(true));
        }
        assert_eq!(&out[..], b"1,2.5,\"a,\"\"b\"\"\nc\"\n2,,\"\"\n");
    }

    #[test]
    fn a_bad_value_names_its_line() {
        let rows = parse_rows(b"1\t1.0\tx\n2\tabc\ty\n", &format(false), "t").unwrap();
        let e = rows_to_batch(&rows, &schema(), &[], "t").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        assert_eq!(
            crate::errors::sqlstate(&e),
            crate::errors::INVALID_TEXT_REPRESENTATION
        );
        let rows = parse_rows(b"1\t1.0\n", &format(false), "t").unwrap();
        let e = rows_to_batch(&rows, &schema(), &[], "t").unwrap_err();
        assert!(e.to_string().contains("line 1: expected 3 fields"), "{e}");
    }
}
