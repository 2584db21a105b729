//! What the PostgreSQL front end does with each statement before (or instead of)
//! handing it to the session: transaction control, the client settings drivers send,
//! `COPY ... FROM STDIN / TO STDOUT`, and the command tag a client sees. Statements are
//! told apart by their syntax tree ([`ddl::parse`](tessera_planner::ddl::parse)), never
//! by their text.

use std::ops::ControlFlow;

use datafusion::common::{DataFusionError, Result, TableReference, plan_err};
use datafusion::sql::parser::{ResetStatement, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget as SqlCopyTarget,
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, ObjectName, Query, Select,
    SelectItem, Set, SetExpr, Statement as SqlStatement, Value, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, Tokenizer};
use tessera_planner::ddl::{
    CopyDirection, CopyTarget, OptionValue, SqlText, Statement, TesseraStatement,
};

/// A statement as the protocol front end sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Command {
    /// Run by the session (Tessera's statements and DataFusion's SQL).
    Run(Statement),
    /// `BEGIN`, `START TRANSACTION`.
    Begin,
    /// `COMMIT`, `END`.
    Commit,
    /// `ROLLBACK`, `ABORT`.
    Rollback,
    /// Accepted and ignored, answered with this command tag (`SAVEPOINT`, `DISCARD
    /// ALL`, `SET TRANSACTION ...`, ...).
    Ignore(&'static str),
    /// `SET name = value` of a PostgreSQL setting (not `datafusion.*` / `tessera.*`);
    /// `None` is `DEFAULT`.
    SetClient { name: String, value: Option<String> },
    /// `RESET name`; `None` is `RESET ALL`.
    Reset(Option<String>),
    /// `SHOW name` of a PostgreSQL setting.
    Show(String),
    /// `SELECT version()`.
    Version,
    /// `COPY table [(columns)] FROM STDIN`.
    CopyIn {
        table: TableReference,
        columns: Vec<String>,
        format: CopyFormat,
    },
    /// `COPY table TO STDOUT` or `COPY (query) TO STDOUT`.
    CopyOut {
        source: CopyOutSource,
        format: CopyFormat,
    },
}

/// What a `COPY ... TO STDOUT` sends.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CopyOutSource {
    /// `COPY (query) TO STDOUT`: the query, to run as any statement.
    Query(Statement),
    /// `COPY name [(columns)] TO STDOUT`: a table's or array's columns (all when empty).
    Table {
        name: TableReference,
        columns: Vec<String>,
    },
}

/// The settings of a `COPY ... STDIN / STDOUT` (PostgreSQL's text, CSV and binary
/// formats).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CopyFormat {
    pub(crate) csv: bool,
    /// PostgreSQL's binary COPY format; the text settings below do not apply.
    pub(crate) binary: bool,
    pub(crate) header: bool,
    pub(crate) delimiter: u8,
    pub(crate) null: String,
    pub(crate) quote: u8,
    pub(crate) escape: u8,
}

impl CopyFormat {
    fn text() -> Self {
        CopyFormat {
            csv: false,
            binary: false,
            header: false,
            delimiter: b'\t',
            null: "\\N".into(),
            quote: b'"',
            escape: b'"',
        }
    }

    fn set_csv(&mut self) {
        self.csv = true;
        self.delimiter = b',';
        self.null = String::new();
    }

    /// `FORMAT text | csv | binary`.
    fn set_format(&mut self, name: &str) -> Result<()> {
        match name.to_ascii_lowercase().as_str() {
            "csv" => self.set_csv(),
            "text" => {}
            "binary" => self.binary = true,
            other => {
                return Err(DataFusionError::NotImplemented(format!(
                    "COPY supports FORMAT text, csv and binary, not {other}"
                )));
            }
        }
        Ok(())
    }

    /// PostgreSQL refuses the text settings in binary mode; so does Tessera.
    fn check(&self) -> Result<()> {
        if self.binary && (self.csv || self.header) {
            return plan_err!("COPY: cannot specify CSV or HEADER in BINARY mode");
        }
        Ok(())
    }
}

/// The connection's setting for progress NOTICEs: a `tessera.*` name, but the
/// connection's own, not the session's (see `super::notice`).
pub(crate) const PROGRESS_NOTICE_SETTING: &str = "tessera.progress_notice_after";

/// Settings that belong to DataFusion or Tessera and go through the session's `SET`.
fn is_engine_setting(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    (lower.starts_with("datafusion.") || lower.starts_with("tessera."))
        && lower != PROGRESS_NOTICE_SETTING
}

/// The source text of each statement of `sql`, as `pg_stat_activity.query` shows it:
/// from its first token to its last (no surrounding blanks, comments or `;`), cut at
/// the `;` tokens sqlparser's PostgreSQL tokenizer finds, as `ddl::parse` cuts them.
/// `None` when the text does not tokenize (then it does not parse either).
pub(crate) fn statement_texts(sql: &str) -> Option<Vec<String>> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize_with_location()
        .ok()?;
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(sql.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    // The tokenizer's locations are 1-based lines and character columns.
    let byte = |location: Location| -> usize {
        let line = (location.line as usize).saturating_sub(1);
        let start = line_starts.get(line).copied().unwrap_or(sql.len());
        let column = (location.column as usize).saturating_sub(1);
        sql.get(start..)
            .and_then(|rest| rest.char_indices().nth(column))
            .map_or(sql.len(), |(i, _)| start + i)
    };
    let mut texts = Vec::new();
    let mut span: Option<(Location, Location)> = None;
    for token in &tokens {
        match &token.token {
            Token::SemiColon | Token::EOF => {
                if let Some((start, end)) = span.take() {
                    texts.push(sql.get(byte(start)..byte(end))?.to_string());
                }
            }
            Token::Whitespace(_) => {}
            _ => {
                let start = span.map_or(token.span.start, |(start, _)| start);
                span = Some((start, token.span.end));
            }
        }
    }
    if let Some((start, end)) = span {
        texts.push(sql.get(byte(start)..byte(end))?.to_string());
    }
    Some(texts)
}

/// A setting's name as PostgreSQL spells it: the parts joined by `.`, lowercased unless
/// quoted.
fn setting_name(parts: &[Ident]) -> String {
    parts
        .iter()
        .map(|part| match part.quote_style {
            Some(_) => part.value.clone(),
            None => part.value.to_ascii_lowercase(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn object_setting_name(name: &ObjectName) -> String {
    let parts: Vec<Ident> = name
        .0
        .iter()
        .filter_map(|part| part.as_ident().cloned())
        .collect();
    setting_name(&parts)
}

/// Classifies one statement parsed by `ddl::parse`, by its syntax tree.
pub(crate) fn classify(statement: Statement) -> Result<Command> {
    let sql = match statement {
        Statement::Tessera(TesseraStatement::Copy {
            name,
            columns,
            direction,
            options,
        }) => return classify_tessera_copy(name, columns, direction, options),
        Statement::Tessera(other) => return Ok(Command::Run(Statement::Tessera(other))),
        Statement::Sql(sql) => sql,
    };
    let tree = match &sql.tree {
        DFStatement::Statement(tree) => tree.as_ref(),
        DFStatement::Reset(ResetStatement::Variable(name)) => {
            let name = object_setting_name(name);
            return Ok(if name == "all" {
                Command::Reset(None)
            } else if is_engine_setting(&name) {
                Command::Run(Statement::Sql(sql))
            } else {
                Command::Reset(Some(name))
            });
        }
        _ => return Ok(Command::Run(Statement::Sql(sql))),
    };
    Ok(match tree {
        SqlStatement::StartTransaction { .. } => Command::Begin,
        SqlStatement::Commit { .. } => Command::Commit,
        SqlStatement::Rollback {
            savepoint: Some(_), ..
        } => Command::Ignore("ROLLBACK"),
        SqlStatement::Rollback { .. } => Command::Rollback,
        SqlStatement::Savepoint { .. } => Command::Ignore("SAVEPOINT"),
        SqlStatement::ReleaseSavepoint { .. } => Command::Ignore("RELEASE"),
        SqlStatement::Discard { .. } => Command::Ignore("DISCARD ALL"),
        SqlStatement::Deallocate { .. } => Command::Ignore("DEALLOCATE"),
        SqlStatement::LISTEN { .. } => Command::Ignore("LISTEN"),
        SqlStatement::UNLISTEN { .. } => Command::Ignore("UNLISTEN"),
        SqlStatement::Set(set) => match classify_set(set)? {
            Some(command) => command,
            None => Command::Run(Statement::Sql(sql)),
        },
        SqlStatement::ShowVariable { variable } => {
            let name = match setting_name(variable).as_str() {
                "transaction.isolation.level" => "transaction_isolation".to_string(),
                "time.zone" => "timezone".to_string(),
                other => other.to_string(),
            };
            if is_engine_setting(&name) || name == "all" || name.is_empty() {
                Command::Run(Statement::Sql(sql))
            } else {
                Command::Show(name)
            }
        }
        SqlStatement::Query(query) if is_version_query(query) => Command::Version,
        SqlStatement::Copy {
            source: CopySource::Query(query),
            to: true,
            target: SqlCopyTarget::Stdout,
            options,
            legacy_options,
            ..
        } => classify_sql_copy(query, options, legacy_options)?,
        _ => Command::Run(Statement::Sql(sql)),
    })
}

/// `SELECT version()` / `SELECT pg_catalog.version()`, nothing else.
fn is_version_query(query: &Query) -> bool {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return false;
    };
    let plain = query.with.is_none()
        && query.order_by.is_none()
        && query.limit_clause.is_none()
        && select.from.is_empty()
        && select.selection.is_none();
    let [SelectItem::UnnamedExpr(Expr::Function(function))] = select.projection.as_slice() else {
        return false;
    };
    let no_arguments = match &function.args {
        FunctionArguments::None => true,
        FunctionArguments::List(list) => list.args.is_empty(),
        FunctionArguments::Subquery(_) => false,
    };
    let name = object_setting_name(&function.name);
    plain && no_arguments && (name == "version" || name == "pg_catalog.version")
}

/// `SET [SESSION | LOCAL] name { = | TO } value`, `SET TIME ZONE value`, `SET
/// TRANSACTION ...`. `None`: an engine setting, for the session to run.
fn classify_set(set: &Set) -> Result<Option<Command>> {
    let (name, values) = match set {
        Set::SingleAssignment {
            variable, values, ..
        } => (object_setting_name(variable), values.as_slice()),
        Set::SetTimeZone { value, .. } => ("timezone".to_string(), std::slice::from_ref(value)),
        Set::SetTransaction { .. } => return Ok(Some(Command::Ignore("SET"))),
        other => {
            return Err(DataFusionError::NotImplemented(format!(
                "{other} is not supported"
            )));
        }
    };
    if is_engine_setting(&name) {
        return Ok(None);
    }
    let is_default = matches!(values, [Expr::Identifier(ident)]
        if ident.quote_style.is_none() && ident.value.eq_ignore_ascii_case("default"));
    let value = if is_default {
        None
    } else {
        // 'a', 'b' lists keep their commas; quotes go.
        Some(
            values
                .iter()
                .map(setting_value)
                .collect::<Vec<_>>()
                .join(", "),
        )
    };
    Ok(Some(Command::SetClient { name, value }))
}

/// One value of a `SET`, as the setting receives it: strings and names without their
/// quotes, anything else as written.
fn setting_value(expr: &Expr) -> String {
    match expr {
        Expr::Identifier(ident) => ident.value.clone(),
        Expr::Value(value) => match &value.value {
            Value::SingleQuotedString(s)
            | Value::DoubleQuotedString(s)
            | Value::EscapedStringLiteral(s) => s.clone(),
            other => other.to_string(),
        },
        other => other.to_string(),
    }
}

fn option_text(value: &OptionValue) -> String {
    match value {
        OptionValue::String(s) | OptionValue::Number(s) | OptionValue::Ident(s) => s.clone(),
        OptionValue::Bool(b) => b.to_string(),
    }
}

fn single_byte(name: &str, value: &str) -> Result<u8> {
    match value.as_bytes() {
        [b] => Ok(*b),
        _ => plan_err!("COPY {name} must be a single one-byte character, got '{value}'"),
    }
}
fn classify_tessera_copy(
    name: TableReference,
    columns: Vec<String>,
    direction: CopyDirection,
    options: Vec<(String, OptionValue)>,
) -> Result<Command> {
    let stdio = matches!(
        direction,
        CopyDirection::From(CopyTarget::Stdio) | CopyDirection::To(CopyTarget::Stdio)
    );
    if !stdio {
        return Ok(Command::Run(Statement::Tessera(TesseraStatement::Copy {
            name,
            columns,
            direction,
            options,
        })));
    }
    let mut format = CopyFormat::text();
    let mut explicit_delimiter = None;
    let mut explicit_null = None;
    for (key, value) in &options {
        let text = option_text(value);
        match key.as_str() {
            "format" => format.set_format(&text)?,
            "binary" => format.binary = !matches!(value, OptionValue::Bool(false)),
            "header" => {
                format.header = !matches!(value, OptionValue::Bool(false))
                    && !text.eq_ignore_ascii_case("false")
            }
            "delimiter" => explicit_delimiter = Some(single_byte("DELIMITER", &text)?),
            "null" => explicit_null = Some(text),
            "quote" => format.quote = single_byte("QUOTE", &text)?,
            "escape" => format.escape = single_byte("ESCAPE", &text)?,
            "encoding" => {}
            other => {
                return Err(DataFusionError::NotImplemented(format!(
                    "COPY option {other} is not supported over STDIN / STDOUT"
                )));
            }
        }
    }
    if let Some(d) = explicit_delimiter {
        format.delimiter = d;
    }
    if let Some(n) = explicit_null {
        format.null = n;
    }
    format.check()?;
    Ok(match direction {
        CopyDirection::From(_) => Command::CopyIn {
            table: name,
            columns,
            format,
        },
        CopyDirection::To(_) => Command::CopyOut {
            source: CopyOutSource::Table { name, columns },
            format,
        },
    })
}

/// `COPY (query) TO STDOUT [WITH] (...)` and the other COPY forms DataFusion plans.
fn classify_sql_copy(
    query: &Query,
    options: &[CopyOption],
    legacy_options: &[CopyLegacyOption],
) -> Result<Command> {
    let mut format = CopyFormat::text();
    let mut delimiter = None;
    let mut null = None;
    for option in options.iter().cloned() {
        match option {
            CopyOption::Format(f) => format.set_format(&f.value)?,
            CopyOption::Header(h) => format.header = h,
            CopyOption::Delimiter(d) => delimiter = Some(single_byte("DELIMITER", &d.to_string())?),
            CopyOption::Null(n) => null = Some(n),
            CopyOption::Quote(q) => format.quote = single_byte("QUOTE", &q.to_string())?,
            CopyOption::Escape(e) => format.escape = single_byte("ESCAPE", &e.to_string())?,
            CopyOption::Encoding(_) => {}
            other => {
                return Err(DataFusionError::NotImplemented(format!(
                    "COPY option {other} is not supported over STDOUT"
                )));
            }
        }
    }
    for option in legacy_options.iter().cloned() {
        match option {
            CopyLegacyOption::Csv(csv_options) => {
                format.set_csv();
                for o in csv_options {
                    match o {
                        CopyLegacyCsvOption::Header => format.header = true,
                        CopyLegacyCsvOption::Quote(q) => {
                            format.quote = single_byte("QUOTE", &q.to_string())?
                        }
                        CopyLegacyCsvOption::Escape(e) => {
                            format.escape = single_byte("ESCAPE", &e.to_string())?
                        }
                        _ => {}
                    }
                }
            }
            CopyLegacyOption::Header => format.header = true,
            CopyLegacyOption::Binary => format.binary = true,
            CopyLegacyOption::Delimiter(d) => {
                delimiter = Some(single_byte("DELIMITER", &d.to_string())?)
            }
            CopyLegacyOption::Null(n) => null = Some(n),
            other => {
                return Err(DataFusionError::NotImplemented(format!(
                    "COPY option {other} is not supported over STDOUT"
                )));
            }
        }
    }
    if let Some(d) = delimiter {
        format.delimiter = d;
    }
    if let Some(n) = null {
        format.null = n;
    }
    format.check()?;
    let query = DFStatement::Statement(Box::new(SqlStatement::Query(Box::new(query.clone()))));
    Ok(Command::CopyOut {
        source: CopyOutSource::Query(Statement::Sql(SqlText::from_tree(query))),
        format,
    })
}

/// What a connection knows of itself that the catalog functions report.
pub(crate) struct ConnectionValues<'a> {
    /// The backend process ID the client was given (BackendKeyData).
    pub(crate) pid: i32,
    /// The role the client logged in as.
    pub(crate) user: &'a str,
    /// A setting's value as `SHOW` gives it, `None` for one the server does not know.
    pub(crate) setting: &'a dyn Fn(&str) -> Option<String>,
}

/// Writes the connection's own values into a statement, as literals: `pg_backend_pid()`,
/// `current_user`, `session_user`, `user`, and `current_setting('name')` of a setting
/// this connection knows (its `SET`s and startup parameters). The session's functions of
/// those names cannot know the connection, and a literal keeps plans of different
/// connections apart (the statement's text, the plan cache's key, changes with it). A
/// prepared statement keeps the values of when it was parsed. True if anything changed.
pub(crate) fn bind_connection_values(statement: &mut Statement, values: &ConnectionValues) -> bool {
    let Statement::Sql(sql) = statement else {
        return false;
    };
    let mut binder = ValueBinder {
        values,
        changed: false,
    };
    let _ = match &mut sql.tree {
        DFStatement::Statement(tree) => tree.visit(&mut binder),
        DFStatement::Explain(explain) => match explain.statement.as_mut() {
            DFStatement::Statement(tree) => tree.visit(&mut binder),
            _ => ControlFlow::Continue(()),
        },
        _ => ControlFlow::Continue(()),
    };
    if binder.changed {
        sql.text = sql.tree.to_string();
    }
    binder.changed
}

struct ValueBinder<'a, 'b> {
    values: &'a ConnectionValues<'b>,
    changed: bool,
}

impl VisitorMut for ValueBinder<'_, '_> {
    type Break = ();

    fn pre_visit_select(&mut self, select: &mut Select) -> ControlFlow<()> {
        // A select item the value replaces keeps the function's name as its column's
        // name, as PostgreSQL names it (`SELECT current_user` has a `current_user`
        // column), made unique when two would share one.
        let mut taken: Vec<String> = select
            .projection
            .iter()
            .filter_map(|item| match item {
                SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.clone()),
                _ => None,
            })
            .collect();
        for item in &mut select.projection {
            let SelectItem::UnnamedExpr(expr) = item else {
                continue;
            };
            let Some(name) = self.bound(expr).map(|(name, _)| name) else {
                continue;
            };
            let mut alias = name.clone();
            let mut n = 1;
            while taken.contains(&alias) {
                n += 1;
                alias = format!("{name}_{n}");
            }
            taken.push(alias.clone());
            *item = SelectItem::ExprWithAlias {
                expr: expr.clone(),
                alias: Ident::with_quote('"', alias),
            };
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let Some((name, value)) = self.bound(expr) {
            *expr = if name == "pg_backend_pid" {
                // An `int4`, as PostgreSQL's (a bare number literal is an `int8`).
                Expr::Cast {
                    kind: datafusion::sql::sqlparser::ast::CastKind::Cast,
                    expr: Box::new(Expr::value(value)),
                    data_type: datafusion::sql::sqlparser::ast::DataType::Int(None),
                    array: false,
                    format: None,
                }
            } else {
                Expr::value(value)
            };
            self.changed = true;
        }
        ControlFlow::Continue(())
    }
}

impl ValueBinder<'_, '_> {
    /// The function `expr` calls and the value it has on this connection, if it is one
    /// of those bound.
    fn bound(&self, expr: &Expr) -> Option<(String, Value)> {
        let Expr::Function(function) = expr else {
            return None;
        };
        let name = object_setting_name(&function.name);
        let name = name
            .strip_prefix("pg_catalog.")
            .unwrap_or(&name)
            .to_string();
        let args: Vec<&Expr> = match &function.args {
            FunctionArguments::None => Vec::new(),
            FunctionArguments::List(list) if list.clauses.is_empty() => {
                let mut args = Vec::new();
                for arg in &list.args {
                    match arg {
                        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => args.push(e),
                        _ => return None,
                    }
                }
                args
            }
            _ => return None,
        };
        let value = match (name.as_str(), args.as_slice()) {
            ("pg_backend_pid", []) => Value::Number(self.values.pid.to_string(), false),
            ("current_user" | "session_user" | "user", []) => {
                Value::SingleQuotedString(self.values.user.to_string())
            }
            ("current_setting", [Expr::Value(v), ..]) if args.len() <= 2 => {
                let Value::SingleQuotedString(setting) = &v.value else {
                    return None;
                };
                // Unknown: the session's function reports the error, or NULL if missing_ok.
                Value::SingleQuotedString((self.values.setting)(&setting.to_ascii_lowercase())?)
            }
            _ => return None,
        };
        Some((name, value))
    }
}

/// PostgreSQL's command tag for a statement that returns no rows (`CREATE TABLE`,
/// `DROP MATRIX`, `SET`, ...), from its syntax tree.
pub(crate) fn command_tag(statement: &Statement) -> String {
    let sql = match statement {
        Statement::Tessera(t) => {
            return match t {
                TesseraStatement::CreateArray { .. } => "CREATE ARRAY",
                TesseraStatement::CreateMatrix { .. } => "CREATE MATRIX",
                TesseraStatement::DropArrays { .. } => "DROP ARRAY",
                TesseraStatement::Copy { .. } => "COPY",
                TesseraStatement::AlterArrayRepartition { .. } => "ALTER ARRAY",
                TesseraStatement::ShowArrays
                | TesseraStatement::Describe { .. }
                | TesseraStatement::Verify { .. } => "SELECT",
            }
            .to_string();
        }
        Statement::Sql(sql) => sql,
    };
    let tree = match &sql.tree {
        DFStatement::Statement(tree) => tree.as_ref(),
        DFStatement::CreateExternalTable(_) => return "CREATE TABLE".into(),
        DFStatement::CopyTo(_) => return "COPY".into(),
        DFStatement::Explain(_) => return "EXPLAIN".into(),
        DFStatement::Reset(_) => return "RESET".into(),
    };
    match tree {
        SqlStatement::CreateTable(_) => "CREATE TABLE".into(),
        SqlStatement::CreateView(_) => "CREATE VIEW".into(),
        SqlStatement::CreateSchema { .. } => "CREATE SCHEMA".into(),
        SqlStatement::CreateDatabase { .. } => "CREATE DATABASE".into(),
        SqlStatement::CreateFunction(_) => "CREATE FUNCTION".into(),
        SqlStatement::CreateIndex(_) => "CREATE INDEX".into(),
        SqlStatement::Drop { object_type, .. } => format!("DROP {object_type}"),
        SqlStatement::DropFunction(_) => "DROP FUNCTION".into(),
        SqlStatement::Truncate { .. } => "TRUNCATE TABLE".into(),
        SqlStatement::AlterTable(_) => "ALTER TABLE".into(),
        SqlStatement::Insert(_) => "INSERT".into(),
        SqlStatement::Update(_) => "UPDATE".into(),
        SqlStatement::Delete(_) => "DELETE".into(),
        SqlStatement::Prepare { .. } => "PREPARE".into(),
        SqlStatement::Execute { .. } => "EXECUTE".into(),
        SqlStatement::Deallocate { .. } => "DEALLOCATE".into(),
        SqlStatement::Set(_) => "SET".into(),
        SqlStatement::Comment { .. } => "COMMENT".into(),
        SqlStatement::Analyze(_) => "ANALYZE".into(),
        SqlStatement::Explain { .. } | SqlStatement::ExplainTable { .. } => "EXPLAIN".into(),
        SqlStatement::ShowVariable { .. } => "SHOW".into(),
        SqlStatement::Copy { .. } => "COPY".into(),
        SqlStatement::StartTransaction { .. } => "BEGIN".into(),
        SqlStatement::Commit { .. } => "COMMIT".into(),
        SqlStatement::Rollback { .. } => "ROLLBACK".into(),
        _ => "SELECT".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::dml_tag;
    use tessera_planner::ddl::parse;

    fn one(sql: &str) -> Command {
        classify(parse(sql).unwrap().remove(0)).unwrap()
    }

    /// Byte offsets that fall inside a multi-byte character once panicked here.
    #[test]
    fn set_with_multibyte_characters_is_an_error_not_a_panic() {
        for sql in [
            "SET application_name 'é'",
            "SET é",
            "SET sessé x",
            "SET session é = 1",
            "SET ééééééé",
            "SETé",
        ] {
            match parse(sql) {
                Ok(mut statements) if !statements.is_empty() => {
                    let _ = classify(statements.remove(0));
                }
                _ => {}
            }
        }
        // Without `=` or `TO`: a syntax error, named where it is.
        let e = parse("SET application_name 'é'").unwrap_err();
        assert!(e.to_string().contains("Line: 1, Column: 22"), "{e}");
        assert_eq!(
            one("SET application_name = 'é'"),
            Command::SetClient {
                name: "application_name".into(),
                value: Some("é".into())
            }
        );
    }

    #[test]
    fn statement_texts_are_cut_at_semicolon_tokens() {
        let sql =
            "-- first\nCREATE MATRIX a (2, 2) ;\n SELECT ';' AS s, 'é'\n  FROM t;;  SHOW ARRAYS";
        assert_eq!(
            statement_texts(sql).unwrap(),
            [
                "CREATE MATRIX a (2, 2)",
                "SELECT ';' AS s, 'é'\n  FROM t",
                "SHOW ARRAYS"
            ]
        );
        assert_eq!(
            statement_texts("  ; -- nothing").unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(statement_texts("SELECT 'open"), None);
    }

    #[test]
    fn client_statements_are_recognised() {
        assert_eq!(one("BEGIN"), Command::Begin);
        assert_eq!(
            one("start transaction isolation level serializable"),
            Command::Begin
        );
        assert_eq!(one("COMMIT"), Command::Commit);
        assert_eq!(one("ROLLBACK"), Command::Rollback);
        assert_eq!(one("ROLLBACK TO SAVEPOINT a"), Command::Ignore("ROLLBACK"));
        assert_eq!(
            one("SET extra_float_digits = 3"),
            Command::SetClient {
                name: "extra_float_digits".into(),
                value: Some("3".into())
            }
        );
        assert_eq!(
            one("SET DateStyle TO 'ISO', 'MDY'"),
            Command::SetClient {
                name: "datestyle".into(),
                value: Some("ISO, MDY".into())
            }
        );
        assert_eq!(
            one("SET statement_timeout = '100ms'"),
            Command::SetClient {
                name: "statement_timeout".into(),
                value: Some("100ms".into())
            }
        );
        assert!(matches!(
            one("SET datafusion.execution.batch_size = 10"),
            Command::Run(_)
        ));
        assert_eq!(
            one("SHOW transaction isolation level"),
            Command::Show("transaction_isolation".into())
        );
        assert!(matches!(
            one("SHOW datafusion.execution.batch_size"),
            Command::Run(_)
        ));
        assert_eq!(one("select  version ( )"), Command::Version);
        assert!(matches!(one("SELECT version() + 1"), Command::Run(_)));
    }

    #[test]
    fn copies_over_the_connection_are_recognised() {
        match one("COPY m (i, j, v) FROM STDIN WITH (FORMAT csv, HEADER true)") {
            Command::CopyIn {
                table,
                columns,
                format,
            } => {
                assert_eq!(table.table(), "m");
                assert_eq!(columns, ["i", "j", "v"]);
                assert!(format.csv && format.header && format.delimiter == b',');
            }
            other => panic!("{other:?}"),
        }
        match one("COPY (SELECT 1 AS a) TO STDOUT WITH (FORMAT csv)") {
            Command::CopyOut {
                source: CopyOutSource::Query(Statement::Sql(query)),
                format,
            } => {
                assert_eq!(query.text, "SELECT 1 AS a");
                assert!(format.csv);
            }
            other => panic!("{other:?}"),
        }
        match one("COPY \"T\" (\"A\", b) TO STDOUT") {
            Command::CopyOut {
                source: CopyOutSource::Table { name, columns },
                format,
            } => {
                assert_eq!(name.table(), "T");
                assert_eq!(columns, ["A", "b"]);
                assert!(!format.csv && format.delimiter == b'\t');
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(one("COPY m FROM 'x.csv'"), Command::Run(_)));
    }

    #[test]
    fn connection_values_become_literals_named_as_postgres_names_them() {
        let setting = |name: &str| (name == "application_name").then(|| "nb".to_string());
        let values = ConnectionValues {
            pid: 4242,
            user: "ada",
            setting: &setting,
        };
        let bound = |sql: &str| {
            let mut statement = parse(sql).unwrap().remove(0);
            let changed = bind_connection_values(&mut statement, &values);
            match statement {
                Statement::Sql(sql) => (sql.text, changed),
                Statement::Tessera(_) => panic!("{sql}"),
            }
        };
        assert_eq!(
            bound(
                "SELECT pg_backend_pid(), current_user, session_user AS s, \
                 current_setting('Application_Name'), current_setting('nosuch', true), \
                 current_setting('application_name') FROM t WHERE u = current_user"
            ),
            (
                "SELECT CAST(4242 AS INT) AS \"pg_backend_pid\", 'ada' AS \"current_user\", 'ada' AS s, \
                 'nb' AS \"current_setting\", current_setting('nosuch', true), \
                 'nb' AS \"current_setting_2\" FROM t WHERE u = 'ada'"
                    .to_string(),
                true
            )
        );
        assert_eq!(
            bound("SELECT 1 FROM pg_catalog.pg_class"),
            ("SELECT 1 FROM pg_catalog.pg_class".to_string(), false)
        );
    }

    #[test]
    fn tags_follow_postgres() {
        let tag = |sql: &str| command_tag(&parse(sql).unwrap().remove(0));
        assert_eq!(tag("CREATE TABLE t (a INT)"), "CREATE TABLE");
        assert_eq!(tag("create or replace view v as select 1"), "CREATE VIEW");
        assert_eq!(tag("CREATE MATRIX m (2, 2)"), "CREATE MATRIX");
        assert_eq!(tag("ALTER MATRIX m REPARTITION"), "ALTER ARRAY");
        assert_eq!(tag("DROP TABLE t"), "DROP TABLE");
        let dml = |sql: &str| dml_tag(&parse(sql).unwrap().remove(0));
        assert_eq!(dml("INSERT INTO t VALUES (1)"), Some("INSERT 0"));
        assert_eq!(dml("SELECT 1"), None);
    }
}
