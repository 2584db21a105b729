//! The class of DataFusion's own errors, found from the statement that failed and the
//! catalog, never from the message text.
//!
//! DataFusion reports an unknown table, an unknown function and a table that already
//! exists all as `Plan` errors, and an unknown setting as a `Configuration` error. After
//! a statement fails, [`classify_statement_error`] looks at its syntax tree and the
//! session: a table it reads that the catalog does not have, a function no registry
//! knows, a `CREATE` whose name is taken, a `SET` or `SHOW` of a setting that does not
//! exist. It wraps the error in a [`TesseraError`] of that kind, which displays as the
//! original did; anything else keeps DataFusion's variant, which the servers map by
//! itself.

use std::collections::HashSet;
use std::ops::ControlFlow;

use datafusion::common::{DataFusionError, TableReference};
use datafusion::execution::session_state::SessionState;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::planner::object_name_to_table_reference;
use datafusion::sql::sqlparser::ast::{
    Expr, ObjectName, Set, Statement, TableFactor, Visit, Visitor,
};

use crate::error::{ErrorKind, TesseraError};

/// `error`, which `statement` raised when planned or run in the session of `state`,
/// with the kind the statement and the catalog give it (see the module docs). Errors
/// Tessera raised with a kind, and errors of other variants, are returned as they are.
pub async fn classify_statement_error(
    state: &SessionState,
    statement: &DFStatement,
    error: DataFusionError,
) -> DataFusionError {
    if TesseraError::find(&error).is_some() {
        return error;
    }
    match statement_error_kind(state, statement, error.find_root()).await {
        Some(kind) => TesseraError::classified(kind, error).into(),
        None => error,
    }
}

async fn statement_error_kind(
    state: &SessionState,
    statement: &DFStatement,
    root: &DataFusionError,
) -> Option<ErrorKind> {
    match root {
        DataFusionError::Plan(_) | DataFusionError::Execution(_) => {}
        DataFusionError::Configuration(_) => {
            return set_variable(statement)
                .filter(|name| !is_setting(state, name))
                .map(|_| ErrorKind::UndefinedObject);
        }
        _ => return None,
    }
    let normalize = state.config_options().sql_parser.enable_ident_normalization;
    let names = Names::of(statement, normalize);
    if let Ok(references) = state.resolve_table_references(statement) {
        for reference in references {
            let skipped = names.table_functions.contains(&reference)
                || names.created.as_ref() == Some(&reference)
                || state.table_functions().contains_key(reference.table());
            if !skipped && !relation_exists(state, &reference).await {
                return Some(ErrorKind::UndefinedTable);
            }
        }
    }
    // A relation called with arguments that is neither a registered table function nor
    // one of Tessera's matrix functions.
    let unknown_table_function = names.table_functions.iter().any(|f| {
        let name = f.table();
        !state.table_functions().contains_key(name) && !crate::la::MATRIX_FUNCTIONS.contains(&name)
    });
    if unknown_table_function {
        return Some(ErrorKind::UndefinedFunction);
    }
    // Without `OR REPLACE` / `IF NOT EXISTS`, a name in use is what stops a CREATE.
    if let Some(target) = &names.created
        && !names.replaces
        && relation_exists(state, target).await
    {
        return Some(ErrorKind::DuplicateTable);
    }
    // A statement that planned may call functions the registries do not list (planned
    // by an `ExprPlanner`): only a planning error can be an unknown function.
    if !matches!(root, DataFusionError::Plan(_)) {
        return None;
    }
    if names.functions.iter().any(|f| !is_function(state, f)) {
        return Some(ErrorKind::UndefinedFunction);
    }
    if let Some(name) = show_variable(statement)
        && !is_setting(state, &name)
    {
        return Some(ErrorKind::UndefinedObject);
    }
    None
}

/// What the classification needs from a statement's tree besides its table references.
#[derive(Default)]
struct Names {
    /// The table a `CREATE TABLE` / `CREATE VIEW` / `CREATE EXTERNAL TABLE` makes.
    created: Option<TableReference>,
    /// The CREATE says `OR REPLACE` or `IF NOT EXISTS`: an existing name is no error.
    replaces: bool,
    /// Functions called in expressions, as DataFusion looks them up; not those inside a
    /// table function's arguments (Tessera's matrix functions are written there).
    functions: Vec<String>,
    /// Relations called with arguments (`FROM matmul(a, b)`): table functions.
    table_functions: HashSet<TableReference>,
    normalize: bool,
    /// How many table function argument lists the walk is inside.
    in_table_function: usize,
}

impl Names {
    fn of(statement: &DFStatement, normalize: bool) -> Self {
        let mut names = Names {
            normalize,
            ..Names::default()
        };
        match statement {
            DFStatement::Statement(s) => {
                (names.created, names.replaces) = match s.as_ref() {
                    Statement::CreateTable(t) => {
                        (names.reference(&t.name), t.or_replace || t.if_not_exists)
                    }
                    Statement::CreateView(v) => {
                        (names.reference(&v.name), v.or_replace || v.if_not_exists)
                    }
                    _ => (None, false),
                };
                let _ = s.visit(&mut names);
            }
            DFStatement::CreateExternalTable(t) => {
                names.created = names.reference(&t.name);
                names.replaces = t.or_replace || t.if_not_exists;
            }
            DFStatement::Explain(explain) => return Names::of(&explain.statement, normalize),
            _ => {}
        }
        names
    }

    fn reference(&self, name: &ObjectName) -> Option<TableReference> {
        object_name_to_table_reference(name.clone(), self.normalize).ok()
    }
}

impl Visitor for Names {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table {
            name,
            args: Some(_),
            ..
        } = factor
        {
            if let Some(reference) = self.reference(name) {
                self.table_functions.insert(reference);
            }
            self.in_table_function += 1;
        }
        ControlFlow::Continue(())
    }

    fn post_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        if matches!(factor, TableFactor::Table { args: Some(_), .. }) {
            self.in_table_function -= 1;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = expr
            && self.in_table_function == 0
        {
            // As DataFusion's planner names it: one identifier normalized, else the
            // qualified name as written.
            let name = match f.name.0.as_slice() {
                [part] => match part.as_ident() {
                    Some(id) if self.normalize && id.quote_style.is_none() => {
                        id.value.to_ascii_lowercase()
                    }
                    Some(id) => id.value.clone(),
                    None => part.to_string(),
                },
                _ => f.name.to_string(),
            };
            self.functions.push(name);
        }
        ControlFlow::Continue(())
    }
}

/// True if the catalog has `reference` (a table, view or array, or a version of one;
/// one that fails to open exists all the same).
async fn relation_exists(state: &SessionState, reference: &TableReference) -> bool {
    let Ok(schema) = state.schema_for_ref(reference.clone()) else {
        return false;
    };
    schema.table_exist(reference.table())
        || !matches!(schema.table(reference.table()).await, Ok(None))
}

/// True if a function registry of the session has `name`. `unnest` is planned by
/// DataFusion's SQL planner itself.
fn is_function(state: &SessionState, name: &str) -> bool {
    state.scalar_functions().contains_key(name)
        || state.aggregate_functions().contains_key(name)
        || state.window_functions().contains_key(name)
        || state.table_functions().contains_key(name)
        || name == "unnest"
}

/// The variable of a `SET name = value`, lowercase as DataFusion sets it.
fn set_variable(statement: &DFStatement) -> Option<String> {
    let DFStatement::Statement(s) = statement else {
        return None;
    };
    match s.as_ref() {
        Statement::Set(Set::SingleAssignment { variable, .. }) => {
            Some(variable.to_string().to_ascii_lowercase())
        }
        _ => None,
    }
}

/// The variable of a `SHOW name`, lowercase as DataFusion looks it up.
fn show_variable(statement: &DFStatement) -> Option<String> {
    let DFStatement::Statement(s) = statement else {
        return None;
    };
    match s.as_ref() {
        Statement::ShowVariable { variable } => Some(
            variable
                .iter()
                .map(|id| id.value.to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join("."),
        ),
        _ => None,
    }
}

/// True if `name` is a setting of the session: one of its configuration entries
/// (DataFusion's and extensions' such as `tessera.*`), a runtime setting, or one of
/// DataFusion's aliases of the time zone.
fn is_setting(state: &SessionState, name: &str) -> bool {
    matches!(name, "timezone" | "time.zone" | "all")
        || name.starts_with("datafusion.runtime.")
        || state
            .config_options()
            .entries()
            .iter()
            .any(|entry| entry.key == name)
}
