//! Arrow types and values as PostgreSQL types and values: the type OID of each column,
//! its text and binary encodings, and bound parameters decoded into `ScalarValue`s.
//!
//! | Arrow | PostgreSQL |
//! |---|---|
//! | Boolean | bool |
//! | Int8, Int16, UInt8 | int2 |
//! | Int32, UInt16 | int4 |
//! | Int64, UInt32, UInt64 | int8 |
//! | Float16, Float32 | float4 |
//! | Float64 | float8 |
//! | Decimal128, Decimal256 | numeric |
//! | Utf8, Utf8View, LargeUtf8 | text |
//! | Binary, LargeBinary, BinaryView, FixedSizeBinary | bytea |
//! | Date32, Date64 | date |
//! | Timestamp without / with time zone | timestamp / timestamptz |
//! | Time32, Time64 | time |
//! | List of Float64 / Float32 / Int64 / Int32 / Utf8 / Boolean | float8[] / float4[] / int8[] / int4[] / text[] / bool[] |
//! | anything else | text, as Arrow displays it |

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, NaiveDate, NaiveTime};
use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Date64Type, Decimal128Type, Decimal256Type, Field, Float16Type,
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, Time32MillisecondType,
    Time32SecondType, Time64MicrosecondType, Time64NanosecondType, TimeUnit, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::ScalarValue;
use pgwire::api::Type;
use pgwire::api::results::{FieldFormat, FieldInfo};

/// Days from 1970-01-01 to 2000-01-01, PostgreSQL's epoch.
pub(crate) const PG_EPOCH_DAYS: i64 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
pub(crate) const PG_EPOCH_MICROS: i64 = PG_EPOCH_DAYS * 86_400_000_000;

/// The PostgreSQL type a column of `data_type` is sent as.
pub(crate) fn pg_type(data_type: &DataType) -> Type {
    match data_type {
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => Type::INT8,
        DataType::Float16 | DataType::Float32 => Type::FLOAT4,
        DataType::Float64 => Type::FLOAT8,
        DataType::Decimal128(..) | DataType::Decimal256(..) => Type::NUMERIC,
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => Type::TEXT,
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => Type::BYTEA,
        DataType::Date32 | DataType::Date64 => Type::DATE,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        DataType::Time32(_) | DataType::Time64(_) => Type::TIME,
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            match f.data_type() {
                DataType::Float64 => Type::FLOAT8_ARRAY,
                DataType::Float32 => Type::FLOAT4_ARRAY,
                DataType::Int64 => Type::INT8_ARRAY,
                DataType::Int32 => Type::INT4_ARRAY,
                DataType::Int16 => Type::INT2_ARRAY,
                DataType::Boolean => Type::BOOL_ARRAY,
                DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => Type::TEXT_ARRAY,
                _ => Type::TEXT,
            }
        }
        _ => Type::TEXT,
    }
}

/// The Arrow type a parameter the client declared as `ty` is read into; `None` for
/// `unknown` (the server decides).
pub(crate) fn arrow_type(ty: &Type) -> Option<DataType> {
    Some(match *ty {
        Type::BOOL => DataType::Boolean,
        Type::INT2 => DataType::Int16,
        Type::INT4 => DataType::Int32,
        Type::INT8 => DataType::Int64,
        Type::FLOAT4 => DataType::Float32,
        Type::FLOAT8 => DataType::Float64,
        Type::NUMERIC => DataType::Decimal128(38, 10),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => DataType::Utf8,
        Type::BYTEA => DataType::Binary,
        Type::DATE => DataType::Date32,
        Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
        Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        _ => {
            let element = arrow_type(&array_element(ty)?)?;
            DataType::new_list(element, true)
        }
    })
}

/// The element type of a one-dimensional array type Tessera reads as a list.
fn array_element(ty: &Type) -> Option<Type> {
    Some(match *ty {
        Type::BOOL_ARRAY => Type::BOOL,
        Type::INT2_ARRAY => Type::INT2,
        Type::INT4_ARRAY => Type::INT4,
        Type::INT8_ARRAY => Type::INT8,
        Type::FLOAT4_ARRAY => Type::FLOAT4,
        Type::FLOAT8_ARRAY => Type::FLOAT8,
        Type::NUMERIC_ARRAY => Type::NUMERIC,
        Type::TEXT_ARRAY => Type::TEXT,
        Type::VARCHAR_ARRAY => Type::VARCHAR,
        Type::BPCHAR_ARRAY => Type::BPCHAR,
        Type::NAME_ARRAY => Type::NAME,
        Type::BYTEA_ARRAY => Type::BYTEA,
        Type::DATE_ARRAY => Type::DATE,
        Type::TIMESTAMP_ARRAY => Type::TIMESTAMP,
        Type::TIMESTAMPTZ_ARRAY => Type::TIMESTAMPTZ,
        _ => return None,
    })
}

/// Row descriptions for `schema`'s fields, each in the format the client asked for.
pub(crate) fn field_infos(
    fields: &[Arc<Field>],
    format: impl Fn(usize) -> FieldFormat,
) -> Vec<FieldInfo> {
    fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            FieldInfo::new(
                f.name().clone(),
                None,
                None,
                pg_type(f.data_type()),
                format(i),
            )
        })
        .collect()
}

/// Appends one value as a DataRow / COPY field: its length, then its bytes; length -1
/// for NULL.
pub(crate) fn encode_field(buf: &mut BytesMut, array: &dyn Array, row: usize, format: FieldFormat) {
    if array.is_null(row) || array.data_type() == &DataType::Null {
        buf.put_i32(-1);
        return;
    }
    let at = buf.len();
    buf.put_i32(0);
    match format {
        FieldFormat::Text => encode_text(buf, array, row),
        FieldFormat::Binary => encode_binary(buf, array, row),
    }
    let len = (buf.len() - at - 4) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends the text form of a non-null value.
pub(crate) fn encode_text(buf: &mut BytesMut, array: &dyn Array, row: usize) {
    use std::fmt::Write;
    let mut w = Writer(buf);
    let _ = match array.data_type() {
        DataType::Boolean => {
            let v = array.as_boolean().value(row);
            w.0.put_u8(if v { b't' } else { b'f' });
            Ok(())
        }
        DataType::Int8 => write!(w, "{}", array.as_primitive::<Int8Type>().value(row)),
        DataType::Int16 => write!(w, "{}", array.as_primitive::<Int16Type>().value(row)),
        DataType::Int32 => write!(w, "{}", array.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => write!(w, "{}", array.as_primitive::<Int64Type>().value(row)),
        DataType::UInt8 => write!(w, "{}", array.as_primitive::<UInt8Type>().value(row)),
        DataType::UInt16 => write!(w, "{}", array.as_primitive::<UInt16Type>().value(row)),
        DataType::UInt32 => write!(w, "{}", array.as_primitive::<UInt32Type>().value(row)),
        DataType::UInt64 => write!(w, "{}", array.as_primitive::<UInt64Type>().value(row)),
        DataType::Float16 => write_float(
            &mut w,
            array.as_primitive::<Float16Type>().value(row).to_f64(),
            6,
        ),
        DataType::Float32 => write_float(
            &mut w,
            array.as_primitive::<Float32Type>().value(row) as f64,
            6,
        ),
        DataType::Float64 => {
            write_float(&mut w, array.as_primitive::<Float64Type>().value(row), 15)
        }
        DataType::Decimal128(_, scale) => {
            let v = array.as_primitive::<Decimal128Type>().value(row);
            w.write_str(&decimal_text(v, *scale))
        }
        DataType::Utf8 => w.write_str(array.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => w.write_str(array.as_string::<i64>().value(row)),
        DataType::Utf8View => w.write_str(array.as_string_view().value(row)),
        DataType::Binary => write_hex(&mut w, array.as_binary::<i32>().value(row)),
        DataType::LargeBinary => write_hex(&mut w, array.as_binary::<i64>().value(row)),
        DataType::BinaryView => write_hex(&mut w, array.as_binary_view().value(row)),
        DataType::FixedSizeBinary(_) => write_hex(&mut w, array.as_fixed_size_binary().value(row)),
        DataType::Date32 => {
            write_date(&mut w, array.as_primitive::<Date32Type>().value(row) as i64)
        }
        DataType::Date64 => write_date(
            &mut w,
            array
                .as_primitive::<Date64Type>()
                .value(row)
                .div_euclid(86_400_000),
        ),
        DataType::Timestamp(unit, tz) => {
            let micros = timestamp_micros(array, row, unit);
            write_timestamp(&mut w, micros, tz.is_some())
        }
        DataType::Time32(_) | DataType::Time64(_) => match time_micros(array, row) {
            Some(micros) => write_time(&mut w, micros),
            None => write_display(&mut w, array, row),
        },
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..)
            if pg_type(array.data_type()) != Type::TEXT =>
        {
            let values = list_values(array, row);
            w.0.put_u8(b'{');
            for i in 0..values.len() {
                if i > 0 {
                    w.0.put_u8(b',');
                }
                if values.is_null(i) {
                    w.0.put_slice(b"NULL");
                } else if matches!(
                    values.data_type(),
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                ) {
                    let mut text = BytesMut::new();
                    encode_text(&mut text, values.as_ref(), i);
                    w.0.put_u8(b'"');
                    for &b in text.iter() {
                        if b == b'"' || b == b'\\' {
                            w.0.put_u8(b'\\');
                        }
                        w.0.put_u8(b);
                    }
                    w.0.put_u8(b'"');
                } else {
                    encode_text(w.0, values.as_ref(), i);
                }
            }
            w.0.put_u8(b'}');
            Ok(())
        }
        _ => write_display(&mut w, array, row),
    };
}

/// Appends the binary form of a non-null value.
fn encode_binary(buf: &mut BytesMut, array: &dyn Array, row: usize) {
    match array.data_type() {
        DataType::Boolean => buf.put_u8(array.as_boolean().value(row) as u8),
        DataType::Int8 => buf.put_i16(array.as_primitive::<Int8Type>().value(row) as i16),
        DataType::UInt8 => buf.put_i16(array.as_primitive::<UInt8Type>().value(row) as i16),
        DataType::Int16 => buf.put_i16(array.as_primitive::<Int16Type>().value(row)),
        DataType::UInt16 => buf.put_i32(array.as_primitive::<UInt16Type>().value(row) as i32),
        DataType::Int32 => buf.put_i32(array.as_primitive::<Int32Type>().value(row)),
        DataType::UInt32 => buf.put_i64(array.as_primitive::<UInt32Type>().value(row) as i64),
        DataType::Int64 => buf.put_i64(array.as_primitive::<Int64Type>().value(row)),
        DataType::UInt64 => buf.put_i64(array.as_primitive::<UInt64Type>().value(row) as i64),
        DataType::Float16 => buf.put_f32(array.as_primitive::<Float16Type>().value(row).to_f32()),
        DataType::Float32 => buf.put_f32(array.as_primitive::<Float32Type>().value(row)),
        DataType::Float64 => buf.put_f64(array.as_primitive::<Float64Type>().value(row)),
        DataType::Decimal128(_, scale) => {
            let v = array.as_primitive::<Decimal128Type>().value(row);
            put_numeric(buf, &decimal_text(v, *scale), (*scale).max(0) as u16);
        }
        DataType::Decimal256(_, scale) => {
            let v = array
                .as_primitive::<Decimal256Type>()
                .value(row)
                .to_string();
            let text = scale_digits(&v, *scale);
            put_numeric(buf, &text, (*scale).max(0) as u16);
        }
        DataType::Binary => buf.put_slice(array.as_binary::<i32>().value(row)),
        DataType::LargeBinary => buf.put_slice(array.as_binary::<i64>().value(row)),
        DataType::BinaryView => buf.put_slice(array.as_binary_view().value(row)),
        DataType::FixedSizeBinary(_) => buf.put_slice(array.as_fixed_size_binary().value(row)),
        DataType::Date32 => {
            let days = array.as_primitive::<Date32Type>().value(row) as i64 - PG_EPOCH_DAYS;
            buf.put_i32(days as i32);
        }
        DataType::Date64 => {
            let days = array
                .as_primitive::<Date64Type>()
                .value(row)
                .div_euclid(86_400_000);
            buf.put_i32((days - PG_EPOCH_DAYS) as i32);
        }
        DataType::Timestamp(unit, _) => {
            buf.put_i64(timestamp_micros(array, row, unit) - PG_EPOCH_MICROS);
        }
        DataType::Time32(_) | DataType::Time64(_) => match time_micros(array, row) {
            Some(micros) => buf.put_i64(micros),
            None => encode_text(buf, array, row),
        },
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..)
            if pg_type(array.data_type()) != Type::TEXT =>
        {
            let values = list_values(array, row);
            let element = pg_type(values.data_type());
            let has_nulls = values.null_count() > 0;
            buf.put_i32(if values.is_empty() { 0 } else { 1 });
            buf.put_i32(has_nulls as i32);
            buf.put_u32(element.oid());
            if !values.is_empty() {
                buf.put_i32(values.len() as i32);
                buf.put_i32(1);
            }
            for i in 0..values.len() {
                encode_field(buf, values.as_ref(), i, FieldFormat::Binary);
            }
        }
        // Text and every type sent as text: the binary form of text is its bytes.
        _ => encode_text(buf, array, row),
    }
}

/// The values of one list cell.
fn list_values(array: &dyn Array, row: usize) -> ArrayRef {
    match array.data_type() {
        DataType::List(_) => array.as_list::<i32>().value(row),
        DataType::LargeList(_) => array.as_list::<i64>().value(row),
        _ => array.as_fixed_size_list().value(row),
    }
}

struct Writer<'a>(&'a mut BytesMut);

impl std::fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
}

/// PostgreSQL's float output: the shortest text that reads back exactly, in exponent
/// form below 1e-4 or from 10^digits up; `NaN`, `Infinity`, `-Infinity`.
fn write_float(w: &mut Writer<'_>, v: f64, digits: i32) -> std::fmt::Result {
    use std::fmt::Write;
    if v.is_nan() {
        return w.write_str("NaN");
    }
    if v.is_infinite() {
        return w.write_str(if v > 0.0 { "Infinity" } else { "-Infinity" });
    }
    let magnitude = v.abs();
    if v != 0.0 && (magnitude < 1e-4 || magnitude >= 10f64.powi(digits)) {
        let text = if digits == 6 {
            format!("{:e}", v as f32)
        } else {
            format!("{v:e}")
        };
        // Rust writes `1e20` / `1.5e-7`; PostgreSQL writes `1e+20` / `1.5e-07`.
        match text.split_once('e') {
            Some((mantissa, exp)) => {
                let (sign, digits) = match exp.strip_prefix('-') {
                    Some(d) => ('-', d),
                    None => ('+', exp),
                };
                write!(w, "{mantissa}e{sign}{digits:0>2}")
            }
            None => w.write_str(&text),
        }
    } else if digits == 6 {
        write!(w, "{}", v as f32)
    } else {
        write!(w, "{v}")
    }
}

fn write_hex(w: &mut Writer<'_>, bytes: &[u8]) -> std::fmt::Result {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    w.0.put_slice(b"\\x");
    for b in bytes {
        w.0.put_u8(HEX[(b >> 4) as usize]);
        w.0.put_u8(HEX[(b & 15) as usize]);
    }
    Ok(())
}

fn write_date(w: &mut Writer<'_>, days_since_epoch: i64) -> std::fmt::Result {
    use std::fmt::Write;
    match NaiveDate::from_num_days_from_ce_opt((days_since_epoch + 719_163) as i32) {
        Some(d) => write!(w, "{}", d.format("%Y-%m-%d")),
        None => write!(w, "{days_since_epoch}"),
    }
}

fn write_timestamp(w: &mut Writer<'_>, micros: i64, with_tz: bool) -> std::fmt::Result {
    use std::fmt::Write;
    match DateTime::from_timestamp_micros(micros) {
        Some(t) => {
            write!(w, "{}", t.naive_utc().format("%Y-%m-%d %H:%M:%S"))?;
            write_fraction(w, micros.rem_euclid(1_000_000))?;
            if with_tz {
                w.write_str("+00")?;
            }
            Ok(())
        }
        None => write!(w, "{micros}"),
    }
}

fn write_time(w: &mut Writer<'_>, micros: i64) -> std::fmt::Result {
    use std::fmt::Write;
    let secs = micros.div_euclid(1_000_000);
    match NaiveTime::from_num_seconds_from_midnight_opt(secs as u32, 0) {
        Some(t) => {
            write!(w, "{}", t.format("%H:%M:%S"))?;
            write_fraction(w, micros.rem_euclid(1_000_000))
        }
        None => write!(w, "{micros}"),
    }
}

/// `.5`, `.123456`: microseconds without trailing zeros, nothing for whole seconds.
fn write_fraction(w: &mut Writer<'_>, micros: i64) -> std::fmt::Result {
    use std::fmt::Write;
    if micros == 0 {
        return Ok(());
    }
    let text = format!("{micros:06}");
    write!(w, ".{}", text.trim_end_matches('0'))
}

fn write_display(w: &mut Writer<'_>, array: &dyn Array, row: usize) -> std::fmt::Result {
    use std::fmt::Write;
    match ArrayFormatter::try_new(array, &FormatOptions::default()) {
        Ok(f) => write!(w, "{}", f.value(row)),
        Err(_) => Ok(()),
    }
}

fn timestamp_micros(array: &dyn Array, row: usize, unit: &TimeUnit) -> i64 {
    use datafusion::arrow::datatypes::{
        TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
        TimestampSecondType,
    };
    match unit {
        TimeUnit::Second => array
            .as_primitive::<TimestampSecondType>()
            .value(row)
            .saturating_mul(1_000_000),
        TimeUnit::Millisecond => array
            .as_primitive::<TimestampMillisecondType>()
            .value(row)
            .saturating_mul(1000),
        TimeUnit::Microsecond => array.as_primitive::<TimestampMicrosecondType>().value(row),
        TimeUnit::Nanosecond => array
            .as_primitive::<TimestampNanosecondType>()
            .value(row)
            .div_euclid(1000),
    }
}

fn time_micros(array: &dyn Array, row: usize) -> Option<i64> {
    Some(match array.data_type() {
        DataType::Time32(TimeUnit::Second) => {
            array.as_primitive::<Time32SecondType>().value(row) as i64 * 1_000_000
        }
        DataType::Time32(TimeUnit::Millisecond) => {
            array.as_primitive::<Time32MillisecondType>().value(row) as i64 * 1000
        }
        DataType::Time64(TimeUnit::Microsecond) => {
            array.as_primitive::<Time64MicrosecondType>().value(row)
        }
        DataType::Time64(TimeUnit::Nanosecond) => {
            array.as_primitive::<Time64NanosecondType>().value(row) / 1000
        }
        _ => return None,
    })
}

/// A decimal's unscaled value and scale as text: `12345, 2` -> `123.45`.
fn decimal_text(value: i128, scale: i8) -> String {
    scale_digits(&value.to_string(), scale)
}

fn scale_digits(unscaled: &str, scale: i8) -> String {
    let (sign, digits) = match unscaled.strip_prefix('-') {
        Some(d) => ("-", d),
        None => ("", unscaled),
    };
    if scale <= 0 {
        let zeros = "0".repeat((-scale) as usize);
        return format!("{sign}{digits}{zeros}");
    }
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

/// PostgreSQL's binary numeric: digit count, weight, sign, display scale, then base
/// 10000 digits.
fn put_numeric(buf: &mut BytesMut, text: &str, dscale: u16) {
    let (negative, body) = match text.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, text),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let int = int.trim_start_matches('0');
    // Integer part grouped from the right, fraction from the left, in 4-digit groups.
    let int_pad = (4 - int.len() % 4) % 4;
    let int_digits = format!("{}{int}", "0".repeat(int_pad));
    let frac_pad = (4 - frac.len() % 4) % 4;
    let frac_digits = format!("{frac}{}", "0".repeat(frac_pad));
    let group = |s: &str| -> Vec<i16> {
        s.as_bytes()
            .chunks(4)
            .map(|c| c.iter().fold(0i16, |acc, d| acc * 10 + (d - b'0') as i16))
            .collect()
    };
    let mut digits = group(&int_digits);
    let mut weight = digits.len() as i16 - 1;
    digits.extend(group(&frac_digits));
    while digits.first() == Some(&0) {
        digits.remove(0);
        weight -= 1;
    }
    while digits.last() == Some(&0) {
        digits.pop();
    }
    if digits.is_empty() {
        weight = 0;
    }
    buf.put_i16(digits.len() as i16);
    buf.put_i16(weight);
    buf.put_u16(if negative && !digits.is_empty() {
        0x4000
    } else {
        0
    });
    buf.put_u16(dscale);
    for d in digits {
        buf.put_i16(d);
    }
}

/// A bound parameter: the bytes a client sent, read as `ty` in the given format.
pub(crate) fn decode_parameter(
    bytes: Option<&[u8]>,
    ty: &Type,
    format: FieldFormat,
) -> Result<ScalarValue, String> {
    let Some(bytes) = bytes else {
        return Ok(match arrow_type(ty) {
            Some(t) => ScalarValue::try_from(&t).unwrap_or(ScalarValue::Utf8(None)),
            None => ScalarValue::Utf8(None),
        });
    };
    match format {
        FieldFormat::Text => {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| format!("invalid UTF-8 in a {} parameter", ty.name()))?;
            decode_text(text, ty)
        }
        FieldFormat::Binary => decode_binary(bytes, ty),
    }
}

fn invalid(ty: &Type, text: &str) -> String {
    format!("invalid input syntax for type {}: \"{text}\"", ty.name())
}

/// A value in PostgreSQL's text form.
pub(crate) fn decode_text(text: &str, ty: &Type) -> Result<ScalarValue, String> {
    let t = text.trim();
    Ok(match *ty {
        Type::BOOL => ScalarValue::Boolean(Some(match t.to_ascii_lowercase().as_str() {
            "t" | "true" | "y" | "yes" | "on" | "1" => true,
            "f" | "false" | "n" | "no" | "off" | "0" => false,
            _ => return Err(invalid(ty, text)),
        })),
        Type::INT2 => ScalarValue::Int16(Some(t.parse().map_err(|_| invalid(ty, text))?)),
        Type::INT4 => ScalarValue::Int32(Some(t.parse().map_err(|_| invalid(ty, text))?)),
        Type::INT8 => ScalarValue::Int64(Some(t.parse().map_err(|_| invalid(ty, text))?)),
        Type::FLOAT4 => {
            ScalarValue::Float32(Some(parse_float(t).ok_or_else(|| invalid(ty, text))? as f32))
        }
        Type::FLOAT8 => {
            ScalarValue::Float64(Some(parse_float(t).ok_or_else(|| invalid(ty, text))?))
        }
        Type::NUMERIC => {
            let scale = t.split_once('.').map_or(0, |(_, f)| f.len()).min(38) as i8;
            ScalarValue::try_from_string(t.to_string(), &DataType::Decimal128(38, scale))
                .map_err(|_| invalid(ty, text))?
        }
        Type::BYTEA => ScalarValue::Binary(Some(match t.strip_prefix("\\x") {
            Some(hex) => parse_hex(hex).ok_or_else(|| invalid(ty, text))?,
            None => text.as_bytes().to_vec(),
        })),
        Type::DATE | Type::TIMESTAMP | Type::TIMESTAMPTZ => {
            let target = arrow_type(ty).unwrap_or(DataType::Utf8);
            ScalarValue::try_from_string(t.to_string(), &target).map_err(|_| invalid(ty, text))?
        }
        _ => match array_element(ty) {
            Some(element) => {
                let items = parse_array_text(text)?;
                let values = items
                    .iter()
                    .map(|item| match item {
                        Some(v) => decode_text(v, &element),
                        None => null_of(&element),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                list_value(&values, &element)?
            }
            None => ScalarValue::Utf8(Some(text.to_string())),
        },
    })
}

/// A NULL of the type a parameter declared as `ty` is read into.
fn null_of(ty: &Type) -> Result<ScalarValue, String> {
    let t = arrow_type(ty).unwrap_or(DataType::Utf8);
    ScalarValue::try_from(&t).map_err(|e| format!("no NULL of type {}: {e}", ty.name()))
}

/// `values` (each read as `element`) as a one-row list.
fn list_value(values: &[ScalarValue], element: &Type) -> Result<ScalarValue, String> {
    let t = arrow_type(element).unwrap_or(DataType::Utf8);
    // Each value is of `t` already, except NUMERIC, whose scale follows its text.
    let values = values
        .iter()
        .map(|v| v.cast_to(&t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("an array of {}: {e}", element.name()))?;
    Ok(ScalarValue::List(ScalarValue::new_list_nullable(
        &values, &t,
    )))
}

/// The elements of PostgreSQL's text form of a one-dimensional array (`{1,2}`,
/// `{"a b",NULL,"say \"hi\""}`), `None` for an unquoted `NULL`.
pub(crate) fn parse_array_text(text: &str) -> Result<Vec<Option<String>>, String> {
    let malformed = || format!("malformed array literal: \"{text}\"");
    let body = text
        .trim()
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .ok_or_else(malformed)?;
    let mut out = Vec::new();
    if body.trim().is_empty() {
        return Ok(out);
    }
    let mut chars = body.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        let quoted = chars.next_if_eq(&'"').is_some();
        if quoted {
            loop {
                match chars.next() {
                    None => return Err(malformed()),
                    Some('"') => break,
                    Some('\\') => value.push(chars.next().ok_or_else(malformed)?),
                    Some(c) => value.push(c),
                }
            }
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
        } else {
            loop {
                match chars.peek() {
                    None | Some(',') => break,
                    Some('{') => {
                        return Err(format!(
                            "multidimensional arrays are not supported: \"{text}\""
                        ));
                    }
                    Some('"') | Some('}') => return Err(malformed()),
                    Some('\\') => {
                        chars.next();
                        value.push(chars.next().ok_or_else(malformed)?);
                    }
                    Some(&c) => {
                        value.push(c);
                        chars.next();
                    }
                }
            }
            value.truncate(value.trim_end().len());
            if value.is_empty() {
                return Err(malformed());
            }
        }
        out.push((quoted || !value.eq_ignore_ascii_case("null")).then_some(value));
        match chars.next() {
            None => return Ok(out),
            Some(',') => {}
            Some(_) => return Err(malformed()),
        }
    }
}

fn parse_float(t: &str) -> Option<f64> {
    match t.to_ascii_lowercase().as_str() {
        "nan" => Some(f64::NAN),
        "infinity" | "inf" | "+infinity" => Some(f64::INFINITY),
        "-infinity" | "-inf" => Some(f64::NEG_INFINITY),
        other => other.parse().ok(),
    }
}

fn parse_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

fn take<const N: usize>(bytes: &[u8], ty: &Type) -> Result<[u8; N], String> {
    bytes.try_into().map_err(|_| {
        format!(
            "a binary {} parameter must be {N} bytes, got {}",
            ty.name(),
            bytes.len()
        )
    })
}

/// A value in PostgreSQL's binary form.
fn decode_binary(bytes: &[u8], ty: &Type) -> Result<ScalarValue, String> {
    Ok(match *ty {
        Type::BOOL => ScalarValue::Boolean(Some(take::<1>(bytes, ty)?[0] != 0)),
        Type::INT2 => ScalarValue::Int16(Some(i16::from_be_bytes(take(bytes, ty)?))),
        Type::INT4 => ScalarValue::Int32(Some(i32::from_be_bytes(take(bytes, ty)?))),
        Type::INT8 => ScalarValue::Int64(Some(i64::from_be_bytes(take(bytes, ty)?))),
        Type::FLOAT4 => ScalarValue::Float32(Some(f32::from_be_bytes(take(bytes, ty)?))),
        Type::FLOAT8 => ScalarValue::Float64(Some(f64::from_be_bytes(take(bytes, ty)?))),
        Type::BYTEA => ScalarValue::Binary(Some(bytes.to_vec())),
        Type::DATE => {
            let days = i32::from_be_bytes(take(bytes, ty)?) as i64 + PG_EPOCH_DAYS;
            ScalarValue::Date32(Some(days as i32))
        }
        Type::TIMESTAMP => ScalarValue::TimestampMicrosecond(
            Some(i64::from_be_bytes(take(bytes, ty)?).saturating_add(PG_EPOCH_MICROS)),
            None,
        ),
        Type::TIMESTAMPTZ => ScalarValue::TimestampMicrosecond(
            Some(i64::from_be_bytes(take(bytes, ty)?).saturating_add(PG_EPOCH_MICROS)),
            Some("+00:00".into()),
        ),
        Type::NUMERIC => {
            let text = numeric_text(bytes).ok_or("a malformed binary numeric parameter")?;
            decode_text(&text, ty)?
        }
        _ if array_element(ty).is_some() => binary_array(bytes, ty)
            .ok_or_else(|| format!("a malformed binary {} parameter", ty.name()))??,
        _ => ScalarValue::Utf8(Some(
            String::from_utf8(bytes.to_vec())
                .map_err(|_| format!("invalid UTF-8 in a {} parameter", ty.name()))?,
        )),
    })
}

fn read_i16(bytes: &[u8], at: usize) -> Option<i16> {
    Some(i16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn read_i32(bytes: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// PostgreSQL's binary numeric as decimal text.
pub(crate) fn numeric_text(bytes: &[u8]) -> Option<String> {
    let ndigits = read_i16(bytes, 0)?.max(0) as usize;
    let weight = read_i16(bytes, 2)? as i64;
    let sign = read_i16(bytes, 4)? as u16;
    let dscale = read_i16(bytes, 6)?.max(0) as usize;
    if sign == 0xC000 {
        return Some("NaN".into());
    }
    let digits: Vec<i64> = (0..ndigits)
        .map(|k| read_i16(bytes, 8 + 2 * k).map(|d| d as i64))
        .collect::<Option<_>>()?;
    let mut int = String::new();
    let mut frac = String::new();
    for (k, d) in digits.iter().enumerate() {
        let position = weight - k as i64;
        if position >= 0 {
            int.push_str(&format!("{d:04}"));
        } else {
            frac.push_str(&format!("{d:04}"));
        }
    }
    // Groups between the last digit and the decimal point are zeros.
    let int_groups = weight + 1;
    let have_int = digits.len().min(int_groups.max(0) as usize) as i64;
    for _ in have_int..int_groups {
        int.push_str("0000");
    }
    if weight < -1 {
        frac = format!("{}{frac}", "0000".repeat((-weight - 1) as usize));
    }
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    frac.truncate(dscale);
    while frac.len() < dscale {
        frac.push('0');
    }
    let sign = if sign == 0x4000 { "-" } else { "" };
    Some(if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    })
}

/// PostgreSQL's binary form of a one-dimensional array of `ty` (header: dimensions,
/// has-nulls flag, element OID, then length and lower bound per dimension; then each
/// element's length, -1 for NULL, and bytes). `None` for malformed framing; an element
/// that does not decode is an error.
fn binary_array(bytes: &[u8], ty: &Type) -> Option<Result<ScalarValue, String>> {
    let declared = array_element(ty)?;
    let ndim = read_i32(bytes, 0)?;
    // The element type the client wrote, if Tessera reads it; else the declared one.
    let element = Type::from_oid(read_i32(bytes, 8)? as u32)
        .filter(|t| arrow_type(t).is_some() && array_element(t).is_none())
        .unwrap_or(declared);
    let (len, mut at) = match ndim {
        0 => (0, 12),
        1 => (read_i32(bytes, 12)?.max(0) as usize, 20),
        _ => {
            return Some(Err(format!(
                "multidimensional {} parameters are not supported",
                ty.name()
            )));
        }
    };
    let mut values = Vec::with_capacity(len.min(bytes.len() / 4));
    for _ in 0..len {
        let n = read_i32(bytes, at)?;
        at += 4;
        let value = if n < 0 {
            null_of(&element)
        } else {
            let item = bytes.get(at..at + n as usize)?;
            at += n as usize;
            decode_binary(item, &element)
        };
        match value {
            Ok(v) => values.push(v),
            Err(e) => return Some(Err(e)),
        }
    }
    if at != bytes.len() {
        return None;
    }
    Some(list_value(&values, &element))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Decimal128Array, Float64Array};

    fn text(array: &dyn Array, row: usize) -> String {
        let mut buf = BytesMut::new();
        encode_text(&mut buf, array, row);
        String::from_utf8(buf.to_vec()).unwrap()
    }

    #[test]
    fn floats_print_as_postgres_does() {
        let a = Float64Array::from(vec![1.5, 1e20, 1.5e-7, f64::NAN, -0.25, 123456789012345.0]);
        let got: Vec<String> = (0..a.len()).map(|i| text(&a, i)).collect();
        assert_eq!(
            got,
            ["1.5", "1e+20", "1.5e-07", "NaN", "-0.25", "123456789012345"]
        );
    }

    #[test]
    fn numerics_round_trip_through_binary() {
        let a = Decimal128Array::from(vec![12345, -5, 0, 100000000])
            .with_precision_and_scale(20, 2)
            .unwrap();
        for (row, expected) in ["123.45", "-0.05", "0.00", "1000000.00"].iter().enumerate() {
            assert_eq!(text(&a, row), *expected);
            let mut buf = BytesMut::new();
            encode_binary(&mut buf, &a, row);
            assert_eq!(numeric_text(&buf).unwrap(), *expected);
        }
    }

    #[test]
    fn array_parameters_decode_from_text_and_binary() {
        let list = |values: Vec<ScalarValue>, t: DataType| {
            ScalarValue::List(ScalarValue::new_list_nullable(&values, &t))
        };
        let ints = list(
            vec![
                ScalarValue::Int64(Some(1)),
                ScalarValue::Int64(None),
                ScalarValue::Int64(Some(-3)),
            ],
            DataType::Int64,
        );
        assert_eq!(
            decode_text("{1, NULL ,-3}", &Type::INT8_ARRAY),
            Ok(ints.clone())
        );
        let words = list(
            vec![
                ScalarValue::Utf8(Some("r".into())),
                ScalarValue::Utf8(Some("a b".into())),
                ScalarValue::Utf8(Some("NULL".into())),
                ScalarValue::Utf8(Some("say \"hi\", \\o/".into())),
                ScalarValue::Utf8(None),
            ],
            DataType::Utf8,
        );
        assert_eq!(
            decode_text(
                r#"{r,"a b","NULL","say \"hi\", \\o/",null}"#,
                &Type::TEXT_ARRAY
            ),
            Ok(words.clone())
        );
        assert_eq!(
            decode_text("{}", &Type::FLOAT8_ARRAY),
            Ok(list(vec![], DataType::Float64))
        );
        for bad in ["1,2", "{1,2", "{1,,2}", "{{1},{2}}", "{1,x}", r#"{"a}"#] {
            assert!(decode_text(bad, &Type::INT4_ARRAY).is_err(), "{bad}");
        }

        // What the binary encoder writes (as PostgreSQL does) decodes back.
        let array = ScalarValue::List(ScalarValue::new_list_nullable(
            &[
                ScalarValue::Int64(Some(1)),
                ScalarValue::Int64(None),
                ScalarValue::Int64(Some(-3)),
            ],
            &DataType::Int64,
        ))
        .to_array()
        .unwrap();
        let mut buf = BytesMut::new();
        encode_binary(&mut buf, array.as_ref(), 0);
        assert_eq!(decode_binary(&buf, &Type::INT8_ARRAY), Ok(ints));
        let words_array = words.to_array().unwrap();
        let mut buf = BytesMut::new();
        encode_binary(&mut buf, words_array.as_ref(), 0);
        assert_eq!(decode_binary(&buf, &Type::TEXT_ARRAY), Ok(words));
        // psycopg's int2[] of [1, 2], read as the int2 the elements say they are.
        let psycopg = b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x15\x00\x00\x00\x02\x00\x00\x00\x01\x00\x00\x00\x02\x00\x01\x00\x00\x00\x02\x00\x02";
        assert_eq!(
            decode_binary(psycopg, &Type::INT2_ARRAY),
            Ok(list(
                vec![ScalarValue::Int16(Some(1)), ScalarValue::Int16(Some(2))],
                DataType::Int16
            ))
        );
        assert!(decode_binary(&psycopg[..30], &Type::INT2_ARRAY).is_err());
    }

    #[test]
    fn parameters_decode() {
        assert_eq!(
            decode_text("42", &Type::INT4),
            Ok(ScalarValue::Int32(Some(42)))
        );
        assert!(decode_text("4x2", &Type::INT4).is_err());
        assert_eq!(
            decode_binary(&7i64.to_be_bytes(), &Type::INT8),
            Ok(ScalarValue::Int64(Some(7)))
        );
        assert_eq!(
            decode_binary(&0i32.to_be_bytes(), &Type::DATE),
            Ok(ScalarValue::Date32(Some(10957)))
        );
        assert_eq!(
            decode_text("t", &Type::BOOL),
            Ok(ScalarValue::Boolean(Some(true)))
        );
    }
}
