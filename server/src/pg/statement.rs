//! What the PostgreSQL front end does with each statement before (or instead of)
//! handing it to the session: transaction control, the client settings drivers send,
//! `COPY ... FROM STDIN / TO STDOUT`, and the command tag a client sees.

use datafusion::common::{DataFusionError, Result, TableReference, plan_err};
use datafusion::sql::sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget as SqlCopyTarget,
    Statement as SqlStatement,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use tessera_planner::ddl::{CopyDirection, CopyTarget, OptionValue, Statement, TesseraStatement};

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
    /// `COPY table TO STDOUT` or `COPY (query) TO STDOUT`: the query to run.
    CopyOut { query: String, format: CopyFormat },
}

/// The settings of a `COPY ... STDIN / STDOUT` (PostgreSQL's text and CSV formats).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CopyFormat {
    pub(crate) csv: bool,
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
}

/// The lowercased leading words of a statement, skipping comments.
pub(crate) fn leading_words(sql: &str, n: usize) -> Vec<String> {
    let mut words = Vec::new();
    let mut rest = sql;
    while words.len() < n {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.split_once('\n').map_or("", |(_, after)| after);
            continue;
        }
        if let Some(r) = rest.strip_prefix("/*") {
            rest = r.split_once("*/").map_or("", |(_, after)| after);
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        words.push(rest[..end].to_ascii_lowercase());
        rest = &rest[end..];
    }
    words
}

/// Settings that belong to DataFusion or Tessera and go through the session's `SET`.
fn is_engine_setting(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("datafusion.") || lower.starts_with("tessera.")
}

/// Classifies one statement split by `ddl::parse`.
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
    let words = leading_words(&sql, 4);
    let w = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    Ok(match w(0) {
        "begin" | "start" => Command::Begin,
        "commit" | "end" => Command::Commit,
        "rollback" | "abort" if w(1) == "to" || w(2) == "to" => Command::Ignore("ROLLBACK"),
        "rollback" | "abort" => Command::Rollback,
        "savepoint" => Command::Ignore("SAVEPOINT"),
        "release" => Command::Ignore("RELEASE"),
        "discard" => Command::Ignore("DISCARD ALL"),
        "deallocate" => Command::Ignore("DEALLOCATE"),
        "listen" => Command::Ignore("LISTEN"),
        "unlisten" => Command::Ignore("UNLISTEN"),
        "set" => classify_set(&sql)?,
        "reset" if w(1) == "all" => Command::Reset(None),
        "reset" if !is_engine_setting(w(1)) => Command::Reset(Some(w(1).to_string())),
        "show" if !is_engine_setting(w(1)) && w(1) != "all" && !w(1).is_empty() => {
            let name = if w(1) == "transaction" && w(2) == "isolation" {
                "transaction_isolation".to_string()
            } else if w(1) == "time" && w(2) == "zone" {
                "timezone".to_string()
            } else {
                w(1).to_string()
            };
            Command::Show(name)
        }
        "select" if is_version_query(&sql) => Command::Version,
        "copy" => classify_sql_copy(&sql)?,
        _ => Command::Run(Statement::Sql(sql)),
    })
}

/// `SELECT version()` / `SELECT pg_catalog.version()`, nothing else.
fn is_version_query(sql: &str) -> bool {
    let compact: String = sql
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ';')
        .collect::<String>()
        .to_ascii_lowercase();
    compact == "selectversion()" || compact == "selectpg_catalog.version()"
}

/// `SET [SESSION | LOCAL] name { = | TO } value`, `SET TIME ZONE value`.
fn classify_set(sql: &str) -> Result<Command> {
    let body = sql.trim().trim_end_matches(';').trim();
    // Every slice below is checked: the text is the client's, and a byte offset may
    // fall inside a multi-byte character.
    let mut rest = body.get(3..).unwrap_or("").trim_start();
    for prefix in ["session ", "local "] {
        if let Some(head) = rest.get(..prefix.len())
            && head.eq_ignore_ascii_case(prefix)
        {
            rest = rest.get(prefix.len()..).unwrap_or("").trim_start();
        }
    }
    let lower = rest.to_ascii_lowercase();
    if lower.starts_with("transaction") || lower.starts_with("characteristics") {
        return Ok(Command::Ignore("SET"));
    }
    let (name, value) = if lower.starts_with("time zone") {
        ("timezone".to_string(), rest.get(9..).unwrap_or("").trim())
    } else {
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or(rest.len());
        let (name, after) = rest.split_at(end);
        let name = name.to_string();
        let after = after.trim_start();
        let value = if let Some(v) = after.strip_prefix('=') {
            v
        } else if let Some(v) = after
            .get(..2)
            .filter(|to| to.eq_ignore_ascii_case("to"))
            .and_then(|_| after.get(2..))
        {
            v
        } else {
            return plan_err!("syntax error at or near \"{after}\": expected = or TO in SET");
        };
        (name, value.trim())
    };
    if is_engine_setting(&name) {
        return Ok(Command::Run(Statement::Sql(sql.to_string())));
    }
    let value = if value.eq_ignore_ascii_case("default") {
        None
    } else {
        // 'a', 'b' lists keep their commas; quotes go.
        Some(
            value
                .split(',')
                .map(|part| {
                    let p = part.trim();
                    p.strip_prefix('\'')
                        .and_then(|p| p.strip_suffix('\''))
                        .or_else(|| p.strip_prefix('"').and_then(|p| p.strip_suffix('"')))
                        .unwrap_or(p)
                        .to_string()
                })
                .collect::<Vec<_>>()
                .join(", "),
        )
    };
    Ok(Command::SetClient {
        name: name.to_ascii_lowercase(),
        value,
    })
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
            "format" => match text.to_ascii_lowercase().as_str() {
                "csv" => format.set_csv(),
                "text" => {}
                other => {
                    return Err(DataFusionError::NotImplemented(format!(
                        "COPY ... {} supports FORMAT text and csv, not {other}",
                        if matches!(direction, CopyDirection::From(_)) {
                            "FROM STDIN"
                        } else {
                            "TO STDOUT"
                        }
                    )));
                }
            },
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
    Ok(match direction {
        CopyDirection::From(_) => Command::CopyIn {
            table: name,
            columns,
            format,
        },
        CopyDirection::To(_) => {
            let select = if columns.is_empty() {
                "*".to_string()
            } else {
                columns
                    .iter()
                    .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            Command::CopyOut {
                query: format!("SELECT {select} FROM {}", name.to_quoted_string()),
                format,
            }
        }
    })
}

/// `COPY (query) TO STDOUT [WITH] (...)` and the other COPY forms DataFusion plans.
fn classify_sql_copy(sql: &str) -> Result<Command> {
    let Ok(mut parsed) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return Ok(Command::Run(Statement::Sql(sql.to_string())));
    };
    let Some(SqlStatement::Copy {
        source: CopySource::Query(query),
        to: true,
        target: SqlCopyTarget::Stdout,
        options,
        legacy_options,
        ..
    }) = parsed.pop()
    else {
        return Ok(Command::Run(Statement::Sql(sql.to_string())));
    };
    let mut format = CopyFormat::text();
    let mut delimiter = None;
    let mut null = None;
    for option in options {
        match option {
            CopyOption::Format(f) => match f.value.to_ascii_lowercase().as_str() {
                "csv" => format.set_csv(),
                "text" => {}
                other => {
                    return Err(DataFusionError::NotImplemented(format!(
                        "COPY ... TO STDOUT supports FORMAT text and csv, not {other}"
                    )));
                }
            },
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
    for option in legacy_options {
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
    Ok(Command::CopyOut {
        query: query.to_string(),
        format,
    })
}

/// PostgreSQL's command tag for a statement that returns no rows (`CREATE TABLE`,
/// `DROP MATRIX`, `SET`, ...).
pub(crate) fn command_tag(statement: &Statement) -> String {
    match statement {
        Statement::Tessera(t) => match t {
            TesseraStatement::CreateArray { .. } => "CREATE ARRAY".into(),
            TesseraStatement::CreateMatrix { .. } => "CREATE MATRIX".into(),
            TesseraStatement::DropArrays { .. } => "DROP ARRAY".into(),
            TesseraStatement::Copy { .. } => "COPY".into(),
            TesseraStatement::AlterArrayRepartition { .. } => "ALTER ARRAY".into(),
            TesseraStatement::ShowArrays
            | TesseraStatement::Describe { .. }
            | TesseraStatement::Verify { .. } => "SELECT".into(),
        },
        Statement::Sql(sql) => {
            let words = leading_words(sql, 5);
            let mut words: Vec<&str> = words.iter().map(String::as_str).collect();
            match words.first().copied() {
                Some("create") => {
                    words.retain(|w| {
                        !matches!(
                            *w,
                            "or" | "replace"
                                | "external"
                                | "temporary"
                                | "temp"
                                | "unlogged"
                                | "unique"
                        )
                    });
                    format!("CREATE {}", words.get(1).unwrap_or(&"")).to_uppercase()
                }
                Some("drop") => format!("DROP {}", words.get(1).unwrap_or(&"")).to_uppercase(),
                Some(first) => first.to_uppercase(),
                None => String::new(),
            }
        }
    }
}

/// The DML statements whose `count` result is a command tag (`INSERT 0 3`), not rows.
pub(crate) fn dml_tag(statement: &Statement) -> Option<&'static str> {
    match statement {
        Statement::Tessera(TesseraStatement::Copy { .. }) => Some("COPY"),
        Statement::Tessera(_) => None,
        Statement::Sql(sql) => match leading_words(sql, 1).first().map(String::as_str) {
            Some("insert") => Some("INSERT 0"),
            Some("update") => Some("UPDATE"),
            Some("delete") => Some("DELETE"),
            Some("copy") => Some("COPY"),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert!(classify(parse("SET application_name 'é'").unwrap().remove(0)).is_err());
        assert_eq!(
            one("SET application_name = 'é'"),
            Command::SetClient {
                name: "application_name".into(),
                value: Some("é".into())
            }
        );
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
            Command::CopyOut { query, format } => {
                assert_eq!(query, "SELECT 1 AS a");
                assert!(format.csv);
            }
            other => panic!("{other:?}"),
        }
        match one("COPY t TO STDOUT") {
            Command::CopyOut { query, format } => {
                assert_eq!(query, "SELECT * FROM t");
                assert!(!format.csv && format.delimiter == b'\t');
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(one("COPY m FROM 'x.csv'"), Command::Run(_)));
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
