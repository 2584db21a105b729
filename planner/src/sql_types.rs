//! SQL type names planned the way PostgreSQL plans them, where DataFusion differs.
//!
//! DataFusion reads `FLOAT` and `FLOAT(p)` as a 32-bit float whatever `p` is; PostgreSQL
//! (and the SQL standard, and SQLAlchemy, which emits `FLOAT(53)` for Python floats)
//! reads `FLOAT` as `double precision` and `FLOAT(p)` as `real` for `p` in 1..=24 and
//! `double precision` for 25..=53. `REAL`, `FLOAT4`, `DOUBLE PRECISION` and `FLOAT8`
//! DataFusion already plans as PostgreSQL does.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::Result;
use datafusion::logical_expr::planner::TypePlanner;
use datafusion::sql::sqlparser::ast::{DataType as SqlType, ExactNumberInfo};

use crate::error::{ErrorKind, tessera_error};

/// Plans `FLOAT` / `FLOAT(p)` with PostgreSQL's widths; every other type is left to
/// DataFusion. Registered on every session (see [`crate::la::install`]).
#[derive(Debug, Default)]
pub struct PostgresTypes;

impl TypePlanner for PostgresTypes {
    fn plan_type_field(&self, sql_type: &SqlType) -> Result<Option<FieldRef>> {
        let SqlType::Float(info) = sql_type else {
            return Ok(None);
        };
        let data_type = float_type(info)?;
        Ok(Some(Arc::new(Field::new("", data_type, true))))
    }
}

/// The Arrow type of `FLOAT`, `FLOAT(p)`: PostgreSQL's rule and its messages.
fn float_type(info: &ExactNumberInfo) -> Result<DataType> {
    match info {
        ExactNumberInfo::None => Ok(DataType::Float64),
        ExactNumberInfo::Precision(0) => Err(tessera_error(
            ErrorKind::InvalidParameterValue,
            "precision for type float must be at least 1 bit",
        )),
        ExactNumberInfo::Precision(p) if *p <= 24 => Ok(DataType::Float32),
        ExactNumberInfo::Precision(p) if *p <= 53 => Ok(DataType::Float64),
        ExactNumberInfo::Precision(_) => Err(tessera_error(
            ErrorKind::InvalidParameterValue,
            "precision for type float must be less than 54 bits",
        )),
        ExactNumberInfo::PrecisionAndScale(..) => Err(tessera_error(
            ErrorKind::Syntax,
            "type float takes a precision only, not a scale: FLOAT(p)",
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests may panic
    use super::*;

    #[test]
    fn float_widths_follow_postgresql() {
        let ty = |info| float_type(&info).map_err(|e| e.to_string());
        assert_eq!(ty(ExactNumberInfo::None), Ok(DataType::Float64));
        assert_eq!(ty(ExactNumberInfo::Precision(1)), Ok(DataType::Float32));
        assert_eq!(ty(ExactNumberInfo::Precision(24)), Ok(DataType::Float32));
        assert_eq!(ty(ExactNumberInfo::Precision(25)), Ok(DataType::Float64));
        assert_eq!(ty(ExactNumberInfo::Precision(53)), Ok(DataType::Float64));
        let zero = float_type(&ExactNumberInfo::Precision(0)).unwrap_err();
        assert_eq!(
            crate::TesseraError::find(&zero).map(|e| e.kind()),
            Some(ErrorKind::InvalidParameterValue)
        );
        assert!(zero.to_string().contains("at least 1 bit"), "{zero}");
        let wide = float_type(&ExactNumberInfo::Precision(54)).unwrap_err();
        assert!(wide.to_string().contains("less than 54 bits"), "{wide}");
    }
}
