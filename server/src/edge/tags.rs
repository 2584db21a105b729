//! The command tag of a statement that writes rows, which both wires need: pgwire
//! answers `INSERT 0 3` instead of rows, and Flight SQL runs such statements at once
//! and reports their count.

use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use tessera_planner::ddl::{Statement, TesseraStatement};

/// The DML statements whose `count` result is a command tag (`INSERT 0 3`), not rows.
pub(crate) fn dml_tag(statement: &Statement) -> Option<&'static str> {
    match statement {
        Statement::Tessera(TesseraStatement::Copy { .. }) => Some("COPY"),
        Statement::Tessera(_) => None,
        Statement::Sql(sql) => match &sql.tree {
            DFStatement::CopyTo(_) => Some("COPY"),
            DFStatement::Statement(tree) => match tree.as_ref() {
                SqlStatement::Insert(_) => Some("INSERT 0"),
                SqlStatement::Update(_) => Some("UPDATE"),
                SqlStatement::Delete(_) => Some("DELETE"),
                SqlStatement::Copy { .. } => Some("COPY"),
                _ => None,
            },
            _ => None,
        },
    }
}
