//! Rewrites PostgreSQL-only syntax that clients such as psql send into SQL DataFusion
//! plans, on the parsed AST (sqlparser, PostgreSQL dialect):
//!
//! | PostgreSQL | becomes |
//! |---|---|
//! | `a OPERATOR(pg_catalog.~) b` | `a ~ b` (any operator DataFusion knows) |
//! | `x COLLATE pg_catalog.default` | `x` (DataFusion has no collations) |
//! | `pg_catalog.f(...)`, `FROM pg_catalog.unnest(...)` | `f(...)`, `FROM unnest(...)` |
//! | `'name'::regclass` | `to_regclass('name')` (the relation's OID) |
//! | `x::regclass`, `x::regtype`, `x::regnamespace`, `x::regproc`, `x::regrole` | the object's name as text |
//! | `::pg_catalog.text`, `::name`, `::"char"`, `::oid`, `::int2[]` | the plain SQL type |
//! | `ARRAY(subquery)` | `(SELECT array_agg(...) ...)`, or an empty array when the subquery reads a set-returning function of an outer column |
//! | `'{1,2}'` compared with `=` / `<>`, or in `= ANY('{r,p}')` | `make_array(1, 2)` |
//! | `'{1,NULL}'::int[]` (any array type) | `make_array('1', NULL)::INT[]` |
//! | `FROM pg_type` (a catalog table, unqualified) | `FROM pg_catalog.pg_type` |
//! | `typreceive != 0` (a `regproc` column compared with OID 0) | `typreceive != '-'` |
//! | `generate_subscripts(a, 1)` | `unnest(generate_series(1, array_length(a, 1)))` |
//! | `FLOAT`, `FLOAT(53)` in `CREATE TABLE` and casts | `DOUBLE PRECISION`, as in PostgreSQL |
//! | `x LIKE p ESCAPE '/'` | `x LIKE tessera_like_escape(p, '/')` (the pattern with `\` escapes) |
//! | a scalar subquery that reads a set-returning function of outer columns (psql's publication column lists) | `NULL` |
//! | a scalar subquery that inner-joins a catalog table Tessera never fills (`pg_sequence`, `pg_constraint`, ...) and does not aggregate | `NULL` |
//! | a select-list item holding a subquery, in a query that inner-joins such a table and does not aggregate (pgcli's foreign keys) | `NULL` |
//! | `$1::regclass` (a parameter) | `to_regclass($1)`, as for a literal |
//! | `x::regclass::oid` | `x` |
//! | `oids::regtype[]` | `tessera_regtype_names(oids)`, the types' names |
//! | `information_schema._pg_expandarray(a)` (pgJDBC's primary keys) | `unnest(tessera_expandarray(a))`, records `(x, n)` |
//! | `(record).field` | `get_field(record, 'field')` |
//!
//! Everything else is left as written. A statement that does not parse (Tessera's own
//! statements, for instance) is returned unchanged, as is one nothing applies to.

use std::ops::ControlFlow;

use datafusion::sql::parser::Statement as DFStatement;
use tessera_planner::ddl;

use datafusion::sql::sqlparser::ast::{
    AccessExpr, BinaryOperator, CastKind, DataType, Expr, Function, FunctionArg, FunctionArgExpr,
    FunctionArgumentList, FunctionArguments, Ident, ObjectName, ObjectNamePart, Query, SetExpr,
    Statement, TableFactor, Value, VisitMut, VisitorMut,
};

/// Rewrites the PostgreSQL-only constructs of a parsed statement in its syntax tree
/// (see the module docs); true if anything changed. The text of a rewritten statement
/// becomes the tree's own rendering, so the plan cache and stored definitions see what
/// is planned.
///
/// ```
/// use tessera_planner::ddl::{parse, Statement};
/// use tessera_server::pg_catalog::rewrite_statement;
/// let mut statements = parse(
///     "SELECT c.relname FROM pg_catalog.pg_class c \
///      WHERE c.relname OPERATOR(pg_catalog.~) '^(x)$' COLLATE pg_catalog.default",
/// )
/// .unwrap();
/// assert!(rewrite_statement(&mut statements[0]));
/// let Statement::Sql(sql) = &statements[0] else { panic!() };
/// assert_eq!(
///     sql.text,
///     "SELECT c.relname FROM pg_catalog.pg_class c WHERE c.relname ~ '^(x)$'"
/// );
/// ```
pub fn rewrite_statement(statement: &mut ddl::Statement) -> bool {
    let ddl::Statement::Sql(sql) = statement else {
        return false;
    };
    let changed = rewrite_tree(&mut sql.tree);
    if changed {
        sql.text = sql.tree.to_string();
    }
    changed
}

/// [`rewrite`] of the sqlparser statement inside DataFusion's, or of the statement an
/// `EXPLAIN` explains.
fn rewrite_tree(tree: &mut DFStatement) -> bool {
    match tree {
        DFStatement::Statement(statement) => rewrite(statement),
        DFStatement::Explain(explain) => rewrite_tree(&mut explain.statement),
        _ => false,
    }
}

/// Rewrites one parsed statement in place (see the module docs); true if anything
/// changed.
pub fn rewrite(statement: &mut Statement) -> bool {
    let mut rewriter = Rewriter { changed: false };
    let _ = statement.visit(&mut rewriter);
    rewriter.changed
}

struct Rewriter {
    changed: bool,
}

impl VisitorMut for Rewriter {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        match factor {
            // `FROM pg_catalog.unnest(...)`: a set-returning function, not a catalog table.
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            } => self.changed |= strip_pg_catalog(name),
            // `FROM pg_type`: PostgreSQL searches pg_catalog first, always.
            TableFactor::Table {
                name, args: None, ..
            } => self.changed |= qualify_catalog_table(name),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        // A query that finds no row (it inner-joins a catalog table Tessera never
        // fills) needs no value of its select list: the subqueries there, which may be
        // correlated in ways DataFusion cannot plan (pgcli's foreign keys), are dropped.
        if finds_nothing(query)
            && let SetExpr::Select(select) = query.body.as_mut()
        {
            use datafusion::sql::sqlparser::ast::SelectItem;
            for item in &mut select.projection {
                if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item
                    && has_subquery(e)
                {
                    *e = null();
                    self.changed = true;
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, statement: &mut Statement) -> ControlFlow<()> {
        if let Statement::CreateTable(create) = statement {
            for column in &mut create.columns {
                if let Some(double) = double_precision_float(&column.data_type) {
                    column.data_type = double;
                    self.changed = true;
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_select(
        &mut self,
        select: &mut datafusion::sql::sqlparser::ast::Select,
    ) -> ControlFlow<()> {
        self.changed |= name_duplicate_columns(select);
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let Some(new) = rewrite_expr(expr) {
            *expr = new;
            self.changed = true;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        // Before the children: a subquery that cannot be planned is dropped whole.
        if let Expr::Subquery(query) = expr {
            if reads_function_of_outer_columns(query) || finds_nothing(query) {
                *expr = null();
                self.changed = true;
            } else if let Some(new) = split_outer_conditions(query) {
                *expr = new;
                self.changed = true;
            }
        }
        ControlFlow::Continue(())
    }
}

/// Gives repeated unnamed select items (`SELECT pubname, NULL, NULL`) distinct names:
/// PostgreSQL allows them, DataFusion needs unique column names. True if any changed.
fn name_duplicate_columns(select: &mut datafusion::sql::sqlparser::ast::Select) -> bool {
    use datafusion::sql::sqlparser::ast::SelectItem;
    let mut seen: Vec<String> = Vec::new();
    let mut changed = false;
    for item in &mut select.projection {
        if let SelectItem::UnnamedExpr(expr) = item {
            let name = expr.to_string();
            let count = seen.iter().filter(|s| **s == name).count();
            seen.push(name.clone());
            if count > 0 {
                *item = SelectItem::ExprWithAlias {
                    expr: expr.clone(),
                    alias: Ident::with_quote('"', format!("{name}_{}", count + 1)),
                };
                changed = true;
            }
        }
    }
    changed
}

fn rewrite_expr(expr: &mut Expr) -> Option<Expr> {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::PGCustomBinaryOperator(parts),
            right,
        } => {
            let op = plain_operator(parts.last()?)?;
            Some(Expr::BinaryOp {
                left: left.clone(),
                op,
                right: right.clone(),
            })
        }
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq | BinaryOperator::NotEq,
            right,
        } if is_regproc_column(left) && is_zero(right) => {
            // A function column compared with OID 0 (no function), as ADBC asks
            // `typreceive != 0`: the column is text here, and PostgreSQL shows OID 0 of a
            // regproc as `-`.
            **right = Expr::value(Value::SingleQuotedString("-".into()));
            Some(expr.clone())
        }
        Expr::BinaryOp {
            left,
            op: op @ (BinaryOperator::Eq | BinaryOperator::NotEq),
            right,
        } => {
            let (l, r) = (array_literal(left), array_literal(right));
            if l.is_none() && r.is_none() {
                return None;
            }
            Some(Expr::BinaryOp {
                left: Box::new(l.unwrap_or_else(|| (**left).clone())),
                op: op.clone(),
                right: Box::new(r.unwrap_or_else(|| (**right).clone())),
            })
        }
        Expr::Collate { expr, .. } => Some((**expr).clone()),
        // `relkind = ANY('{r,p}')`, as pgcli writes it.
        Expr::AnyOp { right, .. } | Expr::AllOp { right, .. } => {
            let list = array_literal(unnested(right))?;
            **right = list;
            Some(expr.clone())
        }
        Expr::Like {
            pattern,
            escape_char,
            ..
        }
        | Expr::ILike {
            pattern,
            escape_char,
            ..
        } => {
            // DataFusion escapes with `\` only: other escape characters are translated
            // in the pattern, by a function, since the pattern is often a parameter.
            let escape = match escape_char.as_ref().map(|e| &e.value) {
                Some(Value::SingleQuotedString(c)) if c != "\\" => c.clone(),
                _ => return None,
            };
            let translated = call(
                "tessera_like_escape",
                vec![
                    (**pattern).clone(),
                    Expr::value(Value::SingleQuotedString(escape)),
                ],
            );
            **pattern = translated;
            *escape_char = None;
            Some(expr.clone())
        }
        Expr::Cast {
            expr: inner,
            data_type,
            ..
        } => rewrite_cast(inner, data_type),
        Expr::Function(f) => rewrite_function(f),
        // `(record).field`, a field of a parenthesized expression's record (pgJDBC's
        // `(information_schema._pg_expandarray(k)).n`), as `get_field`.
        Expr::CompoundFieldAccess { root, access_chain }
            if matches!(**root, Expr::Nested(_))
                && access_chain
                    .iter()
                    .all(|a| matches!(a, AccessExpr::Dot(Expr::Identifier(_)))) =>
        {
            let mut out = (**root).clone();
            for access in access_chain.iter() {
                if let AccessExpr::Dot(Expr::Identifier(field)) = access {
                    out = call(
                        "get_field",
                        vec![
                            out,
                            Expr::value(Value::SingleQuotedString(field.value.to_lowercase())),
                        ],
                    );
                }
            }
            Some(out)
        }
        Expr::Subquery(query) => aggregate_catalog_subquery(query),
        _ => None,
    }
}

/// A `regproc` column of a catalog table (held as the function's name here).
fn is_regproc_column(expr: &Expr) -> bool {
    const COLUMNS: &[&str] = &[
        "typinput",
        "typoutput",
        "typreceive",
        "typsend",
        "typmodin",
        "typmodout",
        "typanalyze",
    ];
    let name = match expr {
        Expr::Identifier(ident) => ident,
        Expr::CompoundIdentifier(parts) => match parts.last() {
            Some(last) => last,
            None => return false,
        },
        _ => return false,
    };
    COLUMNS.contains(&name.value.to_ascii_lowercase().as_str())
}

/// The number literal `0`.
fn is_zero(expr: &Expr) -> bool {
    matches!(expr, Expr::Value(v) if matches!(&v.value, Value::Number(n, _) if n == "0"))
}

/// A scalar subquery over catalog tables whose one column is not an aggregate, as
/// psql writes them (`(SELECT c.collname FROM pg_catalog.pg_collation c WHERE ...)`),
/// takes `max` of that column: DataFusion plans correlated scalar subqueries only when
/// they aggregate. A catalog subquery that finds several rows (an error in PostgreSQL)
/// gives the largest instead. Subqueries over other tables are left alone.
fn aggregate_catalog_subquery(query: &Query) -> Option<Expr> {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    if query.limit_clause.is_some()
        || select.projection.len() != 1
        || select.distinct.is_some()
        || !matches!(&select.group_by, datafusion::sql::sqlparser::ast::GroupByExpr::Expressions(e, _) if e.is_empty())
        || !reads_catalog(select)
    {
        return None;
    }
    let (expr, alias) = match &select.projection[0] {
        datafusion::sql::sqlparser::ast::SelectItem::UnnamedExpr(e) => (e, None),
        datafusion::sql::sqlparser::ast::SelectItem::ExprWithAlias { expr, alias } => {
            (expr, Some(alias.clone()))
        }
        _ => return None,
    };
    if is_aggregate_call(expr) {
        return None;
    }
    let mut query = query.clone();
    if let SetExpr::Select(select) = query.body.as_mut() {
        let max = call("max", vec![expr.clone()]);
        select.projection = vec![match alias {
            Some(alias) => {
                datafusion::sql::sqlparser::ast::SelectItem::ExprWithAlias { expr: max, alias }
            }
            None => datafusion::sql::sqlparser::ast::SelectItem::UnnamedExpr(max),
        }];
    }
    Some(Expr::Subquery(Box::new(query)))
}

/// Moves the conditions of a catalog scalar subquery that read only the outer query
/// out of it, `(SELECT x FROM d WHERE d.k = a.k AND a.flag)` -> `CASE WHEN a.flag THEN
/// (SELECT x FROM d WHERE d.k = a.k) END`, and drops (as `NULL`) a subquery whose
/// condition compares outer and inner columns other than by `=`: DataFusion decorrelates
/// neither. psql's only such condition asks for a column's collation when it differs
/// from its type's, which never happens in Tessera (one collation).
fn split_outer_conditions(query: &Query) -> Option<Expr> {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    if !reads_catalog(select) {
        return None;
    }
    let selection = select.selection.as_ref()?;
    let inner = inner_names(select);
    let mut conjuncts = Vec::new();
    split_and(selection, &mut conjuncts);
    let (mut outer, mut kept) = (Vec::new(), Vec::new());
    for c in conjuncts {
        match qualifiers(&c, &inner) {
            (true, false) => outer.push(c),
            (true, true) if !is_equality(&c) => return Some(null()),
            _ => kept.push(c),
        }
    }
    if outer.is_empty() {
        return None;
    }
    let mut query = query.clone();
    if let SetExpr::Select(select) = query.body.as_mut() {
        select.selection = join_and(kept);
    }
    let condition = join_and(outer)?;
    Some(Expr::Case {
        case_token: datafusion::sql::sqlparser::ast::helpers::attached_token::AttachedToken::empty(
        ),
        end_token: datafusion::sql::sqlparser::ast::helpers::attached_token::AttachedToken::empty(),
        operand: None,
        conditions: vec![datafusion::sql::sqlparser::ast::CaseWhen {
            condition,
            result: Expr::Subquery(Box::new(query)),
        }],
        else_result: None,
    })
}

fn is_equality(expr: &Expr) -> bool {
    matches!(
        expr,
        Expr::BinaryOp {
            op: BinaryOperator::Eq,
            ..
        }
    )
}

/// True when a condition of `query` compares its own and outer columns other than by
/// `=` (`oid = ANY(outer.list)`), which DataFusion cannot decorrelate.
fn has_uncorrelatable_condition(query: &Query) -> bool {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return false;
    };
    let Some(selection) = select.selection.as_ref() else {
        return false;
    };
    let inner = inner_names(select);
    let mut conjuncts = Vec::new();
    split_and(selection, &mut conjuncts);
    conjuncts
        .iter()
        .any(|c| qualifiers(c, &inner) == (true, true) && !is_equality(c))
}

/// The names the relations of `select`'s `FROM` go by (aliases, else table names).
fn inner_names(select: &datafusion::sql::sqlparser::ast::Select) -> Vec<String> {
    select
        .from
        .iter()
        .flat_map(|t| std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)))
        .filter_map(|f| match f {
            TableFactor::Table { name, alias, .. } => Some(match alias {
                Some(a) => a.name.value.to_ascii_lowercase(),
                None => name.0.last()?.as_ident()?.value.to_ascii_lowercase(),
            }),
            _ => None,
        })
        .collect()
}

fn split_and(expr: &Expr, out: &mut Vec<Expr>) {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            split_and(left, out);
            split_and(right, out);
        }
        Expr::Nested(inner) => split_and(inner, out),
        other => out.push(other.clone()),
    }
}

fn join_and(exprs: Vec<Expr>) -> Option<Expr> {
    exprs.into_iter().reduce(|a, b| Expr::BinaryOp {
        left: Box::new(a),
        op: BinaryOperator::And,
        right: Box::new(b),
    })
}

/// Whether `expr` reads qualified columns of the outer query (a qualifier not in
/// `inner`) and of the subquery (unqualified columns count as the subquery's).
fn qualifiers(expr: &Expr, inner: &[String]) -> (bool, bool) {
    let (mut outer, mut own) = (false, false);
    let _ = datafusion::sql::sqlparser::ast::visit_expressions(expr, |e| {
        match e {
            // `alias.column` or `schema.table.column`: the part before the column.
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                if inner.contains(&parts[parts.len() - 2].value.to_ascii_lowercase()) {
                    own = true;
                } else {
                    outer = true;
                }
            }
            Expr::Identifier(_) => own = true,
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    (outer, own)
}

/// True when a `FROM` item of `select` is a `pg_catalog` table.
fn reads_catalog(select: &datafusion::sql::sqlparser::ast::Select) -> bool {
    select.from.iter().any(|t| {
        std::iter::once(&t.relation)
            .chain(t.joins.iter().map(|j| &j.relation))
            .any(|f| match f {
                TableFactor::Table {
                    name, args: None, ..
                } => name.0.iter().any(|p| {
                    p.as_ident().is_some_and(|i| {
                        i.value.eq_ignore_ascii_case("pg_catalog") || i.value.starts_with("pg_")
                    })
                }),
                _ => false,
            })
    })
}

/// True for a call of an aggregate function psql's subqueries use.
fn is_aggregate_call(expr: &Expr) -> bool {
    let Expr::Function(f) = expr else {
        return false;
    };
    let Some(name) = f.name.0.last().and_then(|p| p.as_ident()) else {
        return false;
    };
    [
        "count",
        "sum",
        "min",
        "max",
        "avg",
        "array_agg",
        "string_agg",
        "bool_and",
        "bool_or",
        "every",
    ]
    .iter()
    .any(|a| name.value.eq_ignore_ascii_case(a))
}

/// The operator `OPERATOR(schema.op)` names, if DataFusion has it.
fn plain_operator(op: &str) -> Option<BinaryOperator> {
    Some(match op {
        "~" => BinaryOperator::PGRegexMatch,
        "~*" => BinaryOperator::PGRegexIMatch,
        "!~" => BinaryOperator::PGRegexNotMatch,
        "!~*" => BinaryOperator::PGRegexNotIMatch,
        "~~" => BinaryOperator::PGLikeMatch,
        "~~*" => BinaryOperator::PGILikeMatch,
        "!~~" => BinaryOperator::PGNotLikeMatch,
        "!~~*" => BinaryOperator::PGNotILikeMatch,
        "=" => BinaryOperator::Eq,
        "<>" | "!=" => BinaryOperator::NotEq,
        "<" => BinaryOperator::Lt,
        "<=" => BinaryOperator::LtEq,
        ">" => BinaryOperator::Gt,
        ">=" => BinaryOperator::GtEq,
        "+" => BinaryOperator::Plus,
        "-" => BinaryOperator::Minus,
        "*" => BinaryOperator::Multiply,
        "/" => BinaryOperator::Divide,
        "||" => BinaryOperator::StringConcat,
        _ => return None,
    })
}

/// `expr` without the parentheses around it.
fn unnested(expr: &Expr) -> &Expr {
    match expr {
        Expr::Nested(inner) => unnested(inner),
        other => other,
    }
}

/// `'{1,2}'` (PostgreSQL's array text) as `make_array(1, 2)`: whole numbers as
/// numbers, other elements as text, `NULL` as NULL.
fn array_literal(expr: &Expr) -> Option<Expr> {
    let args = array_text_elements(expr)?
        .into_iter()
        .map(|e| match e {
            Some(n) if n.parse::<i64>().is_ok() => Expr::value(Value::Number(n, false)),
            Some(text) => Expr::value(Value::SingleQuotedString(text)),
            None => null(),
        })
        .collect();
    Some(call("make_array", args))
}

/// The elements of a string literal in PostgreSQL's array text (`'{a,"b c",NULL}'`).
fn array_text_elements(expr: &Expr) -> Option<Vec<Option<String>>> {
    let text = string_literal(expr)?;
    if !text.trim_start().starts_with('{') {
        return None;
    }
    crate::pg::types::parse_array_text(text).ok()
}

/// `'{1,2}'::int[]`: the literal's elements as text in `make_array`, cast to the array
/// type (each element is read as the element type, as PostgreSQL does).
fn array_text_cast(inner: &Expr, data_type: &DataType) -> Option<Expr> {
    if !matches!(data_type, DataType::Array(_)) {
        return None;
    }
    let elements = array_text_elements(inner)?;
    // A PostgreSQL-only element type (`int2[]`, `name[]`) is first made a plain one.
    let target = match rewrite_cast(&null(), data_type) {
        Some(Expr::Cast { data_type, .. }) => data_type,
        _ => data_type.clone(),
    };
    let args = elements
        .into_iter()
        .map(|e| e.map_or_else(null, |text| Expr::value(Value::SingleQuotedString(text))))
        .collect();
    Some(cast(&call("make_array", args), target))
}

/// PostgreSQL's `float` and `float(25)` to `float(53)` (SQLAlchemy's and pandas' `Float`)
/// are `double precision`; DataFusion makes every `FLOAT` 32-bit.
fn double_precision_float(data_type: &DataType) -> Option<DataType> {
    use datafusion::sql::sqlparser::ast::ExactNumberInfo;
    match data_type {
        DataType::Float(ExactNumberInfo::None) => Some(DataType::DoublePrecision),
        DataType::Float(ExactNumberInfo::Precision(p)) if (25..=53).contains(p) => {
            Some(DataType::DoublePrecision)
        }
        _ => None,
    }
}

fn rewrite_cast(inner: &Expr, data_type: &DataType) -> Option<Expr> {
    if let Some(array) = array_text_cast(inner, data_type) {
        return Some(array);
    }
    if let Some(double) = double_precision_float(data_type) {
        return Some(cast(inner, double));
    }
    match pg_type_name(data_type)?.as_str() {
        // A name (a literal, or a parameter, as drivers send `$1::regclass`) to its
        // OID; anything else is an OID shown as its name.
        "regclass" => Some(
            if string_literal(inner).is_some() || is_placeholder(inner) {
                call("to_regclass", vec![inner.clone()])
            } else {
                call("tessera_regclass_name", vec![inner.clone()])
            },
        ),
        "regtype" => Some(match string_literal(inner) {
            Some(_) => call("tessera_regtype_oid", vec![inner.clone()]),
            None => call("format_type", vec![inner.clone(), null()]),
        }),
        // An array of type OIDs (`proargtypes::regtype[]`, as pgcli lists functions)
        // as their names.
        "regtype[]" => Some(call("tessera_regtype_names", vec![inner.clone()])),
        "regnamespace" => Some(call("tessera_regnamespace_name", vec![inner.clone()])),
        "regproc" | "regprocedure" => Some(call("tessera_regproc_name", vec![inner.clone()])),
        "regrole" => Some(call("pg_get_userbyid", vec![inner.clone()])),
        "text" | "name" | "char" | "bpchar" | "varchar" => Some(cast(inner, DataType::Text)),
        // `x::regclass::oid`: the OID `x` is (the inner cast was made a name first).
        "oid" if regclass_name_of(inner).is_some() => regclass_name_of(inner).cloned(),
        "oid" | "regoper" | "regoperator" | "regconfig" | "regdictionary" | "xid" | "int8" => {
            Some(cast(inner, DataType::BigInt(None)))
        }
        "int2" => Some(cast(inner, DataType::SmallInt(None))),
        "int4" => Some(cast(inner, DataType::Int(None))),
        "float4" => Some(cast(inner, DataType::Real)),
        "float8" => Some(cast(inner, DataType::DoublePrecision)),
        "bool" => Some(cast(inner, DataType::Boolean)),
        "int2[]" | "int2vector" => Some(cast(
            inner,
            DataType::Array(
                datafusion::sql::sqlparser::ast::ArrayElemTypeDef::SquareBracket(
                    Box::new(DataType::SmallInt(None)),
                    None,
                ),
            ),
        )),
        "oid[]" | "oidvector" => Some(cast(
            inner,
            DataType::Array(
                datafusion::sql::sqlparser::ast::ArrayElemTypeDef::SquareBracket(
                    Box::new(DataType::BigInt(None)),
                    None,
                ),
            ),
        )),
        "text[]" | "name[]" => Some(cast(
            inner,
            DataType::Array(
                datafusion::sql::sqlparser::ast::ArrayElemTypeDef::SquareBracket(
                    Box::new(DataType::Text),
                    None,
                ),
            ),
        )),
        _ => None,
    }
}

/// The PostgreSQL type a cast names when DataFusion would not know it: the last part
/// of a custom name (`pg_catalog.regclass` -> `regclass`, `"char"` -> `char`), with
/// `[]` for arrays of those.
fn pg_type_name(data_type: &DataType) -> Option<String> {
    match data_type {
        DataType::Custom(name, modifiers) if modifiers.is_empty() => {
            let last = name.0.last()?.as_ident()?.value.to_ascii_lowercase();
            Some(last)
        }
        // `"char"` parses as a quoted custom name in some dialects and as CHAR in others.
        DataType::Char(None) | DataType::Character(None) => Some("char".to_string()),
        DataType::Regclass => Some("regclass".to_string()),
        DataType::Array(datafusion::sql::sqlparser::ast::ArrayElemTypeDef::SquareBracket(
            inner,
            _,
        )) => match &**inner {
            DataType::Custom(..) => pg_type_name(inner).map(|t| format!("{t}[]")),
            _ => None,
        },
        _ => None,
    }
}

fn rewrite_function(f: &mut Function) -> Option<Expr> {
    // `ARRAY(SELECT x FROM ...)`: the subquery's values as a list.
    if is_named(&f.name, "array")
        && let FunctionArguments::Subquery(query) = &f.args
    {
        return Some(array_of_subquery(query));
    }
    let stripped = strip_pg_catalog(&mut f.name);
    // `generate_subscripts(a, 1)`, PostgreSQL's set-returning function of an array's
    // subscripts, as DataFusion's unnest of the list `[1, ..., array_length(a, 1)]`.
    if is_named(&f.name, "generate_subscripts")
        && let FunctionArguments::List(list) = &f.args
        && let [
            FunctionArg::Unnamed(FunctionArgExpr::Expr(array)),
            FunctionArg::Unnamed(FunctionArgExpr::Expr(dimension)),
        ] = list.args.as_slice()
    {
        let length = call("array_length", vec![array.clone(), dimension.clone()]);
        let subscripts = call(
            "generate_series",
            vec![Expr::value(Value::Number("1".into(), false)), length],
        );
        return Some(call("unnest", vec![subscripts]));
    }
    // pgJDBC's getPrimaryKeys: `information_schema._pg_expandarray(a)`, the set of
    // `(x, n)` records of an array's elements and positions.
    if is_expandarray(&f.name)
        && let FunctionArguments::List(list) = &f.args
        && let [FunctionArg::Unnamed(FunctionArgExpr::Expr(array))] = list.args.as_slice()
    {
        let pairs = call("tessera_expandarray", vec![array.clone()]);
        return Some(call("unnest", vec![pairs]));
    }
    stripped.then(|| Expr::Function(f.clone()))
}

/// `ARRAY(subquery)` as a scalar subquery aggregating its one column with
/// `array_agg`; empty when the subquery reads a set-returning function of an outer
/// column (a lateral call DataFusion cannot plan; psql only asks that of options
/// Tessera never has).
fn array_of_subquery(query: &Query) -> Expr {
    if reads_function_of_outer_columns(query) || has_uncorrelatable_condition(query) {
        return call("make_array", vec![]);
    }
    let mut query = query.clone();
    let order_by = query.order_by.take();
    if let SetExpr::Select(select) = query.body.as_mut()
        && select.projection.len() == 1
        && let datafusion::sql::sqlparser::ast::SelectItem::UnnamedExpr(e)
        | datafusion::sql::sqlparser::ast::SelectItem::ExprWithAlias { expr: e, .. } =
            &select.projection[0]
    {
        let mut agg = match call("array_agg", vec![e.clone()]) {
            Expr::Function(f) => f,
            _ => return null(),
        };
        if let (Some(order), FunctionArguments::List(list)) = (order_by, &mut agg.args)
            && let datafusion::sql::sqlparser::ast::OrderByKind::Expressions(mut exprs) = order.kind
        {
            // `ORDER BY 1` names the projected column, which is the aggregated value.
            for o in &mut exprs {
                if matches!(&o.expr, Expr::Value(v) if matches!(&v.value, Value::Number(n, _) if n == "1"))
                {
                    o.expr = e.clone();
                }
            }
            list.clauses
                .push(datafusion::sql::sqlparser::ast::FunctionArgumentClause::OrderBy(exprs));
        }
        // An empty subquery gives an empty list, as PostgreSQL's ARRAY() does.
        select.projection = vec![datafusion::sql::sqlparser::ast::SelectItem::UnnamedExpr(
            call(
                "coalesce",
                vec![Expr::Function(agg), call("make_array", vec![])],
            ),
        )];
        return Expr::Subquery(Box::new(query));
    }
    null()
}

/// True when a scalar subquery must find no row, so is `NULL`: it does not aggregate and
/// inner-joins a catalog table Tessera never fills (SQLAlchemy's identity options read
/// `pg_sequence` with outer columns in the select list, which DataFusion cannot
/// decorrelate).
fn finds_nothing(query: &Query) -> bool {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return false;
    };
    let aggregates = select.projection.iter().any(|item| match item {
        datafusion::sql::sqlparser::ast::SelectItem::UnnamedExpr(e)
        | datafusion::sql::sqlparser::ast::SelectItem::ExprWithAlias { expr: e, .. } => {
            is_aggregate_call(e)
        }
        _ => true,
    });
    let plain_group = matches!(&select.group_by, datafusion::sql::sqlparser::ast::GroupByExpr::Expressions(e, _) if e.is_empty());
    if aggregates || !plain_group {
        return false;
    }
    let empty = |factor: &TableFactor| match factor {
        TableFactor::Table {
            name, args: None, ..
        } => match name.0.as_slice() {
            [schema, table] => {
                schema
                    .as_ident()
                    .is_some_and(|s| s.value.eq_ignore_ascii_case(super::PG_CATALOG_SCHEMA))
                    && table
                        .as_ident()
                        .is_some_and(|t| super::tables::is_always_empty(&t.value))
            }
            // Not qualified yet: the rewrite of table names comes after.
            [table] => table
                .as_ident()
                .is_some_and(|t| super::tables::is_always_empty(&t.value)),
            _ => false,
        },
        _ => false,
    };
    select.from.iter().any(|t| {
        empty(&t.relation)
            || t.joins.iter().any(|j| {
                matches!(
                    j.join_operator,
                    datafusion::sql::sqlparser::ast::JoinOperator::Join(_)
                        | datafusion::sql::sqlparser::ast::JoinOperator::Inner(_)
                        | datafusion::sql::sqlparser::ast::JoinOperator::CrossJoin(_)
                ) && empty(&j.relation)
            })
    })
}

/// True when `expr` holds a subquery anywhere.
fn has_subquery(expr: &Expr) -> bool {
    use datafusion::sql::sqlparser::ast::Visit;
    let found = expr.visit(&mut SubqueryFinder);
    found.is_break()
}

struct SubqueryFinder;

impl datafusion::sql::sqlparser::ast::Visitor for SubqueryFinder {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        match expr {
            Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => {
                ControlFlow::Break(())
            }
            _ => ControlFlow::Continue(()),
        }
    }
}

/// True when `query`'s `FROM` calls a table function with a non-literal argument: in
/// psql's catalog queries that is always a lateral call on an outer column.
fn reads_function_of_outer_columns(query: &Query) -> bool {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return false;
    };
    select.from.iter().any(|t| {
        std::iter::once(&t.relation)
            .chain(t.joins.iter().map(|j| &j.relation))
            .any(|f| match f {
                TableFactor::Table {
                    args: Some(args), ..
                } => args.args.iter().any(|a| match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => !is_constant(e),
                    _ => false,
                }),
                _ => false,
            })
    })
}

fn is_constant(expr: &Expr) -> bool {
    match expr {
        Expr::Value(_) => true,
        Expr::UnaryOp { expr, .. } => is_constant(expr),
        _ => false,
    }
}

/// Prefixes `pg_catalog.` to the unqualified name of one of its tables; true if it did.
fn qualify_catalog_table(name: &mut ObjectName) -> bool {
    let [part] = name.0.as_slice() else {
        return false;
    };
    let Some(ident) = part.as_ident() else {
        return false;
    };
    let table = match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_ascii_lowercase(),
    };
    if !super::tables::is_catalog_table(&table) {
        return false;
    }
    name.0.insert(
        0,
        ObjectNamePart::Identifier(Ident::new(super::PG_CATALOG_SCHEMA)),
    );
    true
}

/// Drops a leading `pg_catalog.` from a function name; true if there was one.
fn strip_pg_catalog(name: &mut ObjectName) -> bool {
    if name.0.len() == 2
        && name.0[0]
            .as_ident()
            .is_some_and(|i| i.value.eq_ignore_ascii_case("pg_catalog"))
    {
        name.0.remove(0);
        return true;
    }
    false
}

/// `_pg_expandarray`, alone or in `information_schema`.
fn is_expandarray(name: &ObjectName) -> bool {
    let ident = |p: &ObjectNamePart, want: &str| {
        p.as_ident()
            .is_some_and(|i| i.value.eq_ignore_ascii_case(want))
    };
    match name.0.as_slice() {
        [f] => ident(f, "_pg_expandarray"),
        [schema, f] => ident(schema, "information_schema") && ident(f, "_pg_expandarray"),
        _ => false,
    }
}

fn is_named(name: &ObjectName, expected: &str) -> bool {
    matches!(name.0.as_slice(), [part] if part.as_ident().is_some_and(|i| i.value.eq_ignore_ascii_case(expected)))
}

fn string_literal(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

fn is_placeholder(expr: &Expr) -> bool {
    matches!(expr, Expr::Value(v) if matches!(v.value, Value::Placeholder(_)))
}

/// `x` of `tessera_regclass_name(x)`.
fn regclass_name_of(expr: &Expr) -> Option<&Expr> {
    let Expr::Function(f) = expr else {
        return None;
    };
    if f.name.to_string() != "tessera_regclass_name" {
        return None;
    }
    match &f.args {
        FunctionArguments::List(list) => match list.args.as_slice() {
            [FunctionArg::Unnamed(FunctionArgExpr::Expr(x))] => Some(x),
            _ => None,
        },
        _ => None,
    }
}

fn null() -> Expr {
    Expr::value(Value::Null)
}

fn cast(expr: &Expr, data_type: DataType) -> Expr {
    Expr::Cast {
        kind: CastKind::DoubleColon,
        expr: Box::new(expr.clone()),
        data_type,
        array: false,
        format: None,
    }
}

fn call(name: &str, args: Vec<Expr>) -> Expr {
    Expr::Function(Function {
        name: ObjectName(vec![ObjectNamePart::Identifier(Ident::new(name))]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|e| FunctionArg::Unnamed(FunctionArgExpr::Expr(e)))
                .collect(),
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

#[cfg(test)]
mod tests {
    use tessera_planner::ddl::{Statement, parse};

    /// The statement's text after the rewrite, and whether anything changed.
    fn rewritten(sql: &str) -> (String, bool) {
        let mut statements = parse(sql).unwrap();
        let changed = super::rewrite_statement(&mut statements[0]);
        match &statements[0] {
            Statement::Sql(sql) => (sql.text.clone(), changed),
            Statement::Tessera(_) => (sql.to_string(), changed),
        }
    }

    #[test]
    fn psql_constructs_become_datafusion_sql() {
        let cases = [
            (
                "SELECT x::pg_catalog.regclass, 'pg_catalog.pg_class'::pg_catalog.regclass",
                "SELECT tessera_regclass_name(x), to_regclass('pg_catalog.pg_class')",
            ),
            (
                // pgJDBC's getPrimaryKeys.
                "SELECT (information_schema._pg_expandarray(i.indkey)).n, (r.keys).x FROM i",
                "SELECT get_field((unnest(tessera_expandarray(i.indkey))), 'n'), get_field((r.keys), 'x') FROM i",
            ),
            (
                // ADBC's PostgreSQL driver before an append, and a column's OID.
                "SELECT 1 WHERE a = $1::regclass::oid AND b = c::regclass::oid",
                "SELECT 1 WHERE a = to_regclass($1)::BIGINT AND b = c",
            ),
            (
                "SELECT t::pg_catalog.regtype::pg_catalog.text",
                "SELECT format_type(t, NULL)::TEXT",
            ),
            (
                "SELECT pg_catalog.array_to_string(a, ',') FROM pg_catalog.unnest(b) x",
                "SELECT array_to_string(a, ',') FROM unnest(b) x",
            ),
            ("SELECT a = '{0}'", "SELECT a = make_array(0)"),
            (
                r#"SELECT '{1,NULL}'::int[], '{r,"p q"}'::text[], '{}'::int8[], '{1}'::int2[]"#,
                "SELECT make_array('1', NULL)::INT[], make_array('r', 'p q')::TEXT[], \
                 make_array()::INT8[], make_array('1')::INT2[]",
            ),
            (
                "SELECT oid FROM pg_type WHERE (typreceive != 0 OR t.typsend <> 0) AND typreceive::TEXT != 'array_recv'",
                "SELECT oid FROM pg_catalog.pg_type WHERE (typreceive <> '-' OR t.typsend <> '-') AND typreceive::TEXT <> 'array_recv'",
            ),
            (
                "SELECT k = ANY('{r,p}'), k <> ALL ('{1, 2}'), k = ANY(make_array('r'))",
                "SELECT k = ANY(make_array('r', 'p')), k <> ALL(make_array(1, 2)), k = ANY(make_array('r'))",
            ),
            (
                "SELECT ARRAY(SELECT r FROM roles WHERE oid = 1 ORDER BY 1)",
                "SELECT (SELECT coalesce(array_agg(r ORDER BY r), make_array()) FROM roles WHERE oid = 1)",
            ),
            (
                "SELECT (SELECT string_agg(n, ', ') FROM generate_series(0, t.k) s, a WHERE x = s)",
                "SELECT NULL",
            ),
            (
                "SELECT (SELECT d.x FROM pg_catalog.pg_attrdef d WHERE d.k = a.k AND a.flag) FROM t a",
                "SELECT CASE WHEN a.flag THEN (SELECT max(d.x) FROM pg_catalog.pg_attrdef d WHERE d.k = a.k) END FROM t a",
            ),
            (
                "SELECT (SELECT c.n FROM pg_catalog.pg_type c WHERE c.oid = a.t AND a.c <> c.c) FROM t a",
                "SELECT NULL FROM t a",
            ),
            (
                "SELECT (SELECT f(a.x, s.seqstart) FROM pg_catalog.pg_sequence s WHERE s.seqrelid = g(a.r)), \
                 (SELECT count(*) FROM pg_catalog.pg_sequence) FROM t a",
                "SELECT NULL, (SELECT count(*) FROM pg_catalog.pg_sequence) FROM t a",
            ),
            (
                "SELECT (SELECT x FROM other WHERE other.k = a.k AND a.flag) FROM t a",
                "SELECT (SELECT x FROM other WHERE other.k = a.k AND a.flag) FROM t a",
            ),
            ("SELECT NULL, NULL, 1", "SELECT NULL, NULL AS \"NULL_2\", 1"),
            (
                "CREATE TABLE f (a FLOAT(53), b FLOAT, c FLOAT(24), d REAL)",
                "CREATE TABLE f (a DOUBLE PRECISION, b DOUBLE PRECISION, c FLOAT(24), d REAL)",
            ),
            (
                "SELECT CAST(x AS FLOAT(53)), y::float",
                "SELECT x::DOUBLE PRECISION, y::DOUBLE PRECISION",
            ),
            (
                "SELECT t.typname FROM pg_type t JOIN Pg_Namespace n ON true, \"PG_CLASS\"",
                "SELECT t.typname FROM pg_catalog.pg_type t JOIN pg_catalog.Pg_Namespace n ON true, \"PG_CLASS\"",
            ),
            (
                "SELECT n LIKE $1 || '%' ESCAPE '/', n NOT ILIKE 'a/_' ESCAPE '/', n LIKE 'a\\_' ESCAPE '\\'",
                "SELECT n LIKE tessera_like_escape($1 || '%', '/'), n NOT ILIKE tessera_like_escape('a/_', '/'), n LIKE 'a\\_' ESCAPE '\\'",
            ),
            (
                "SELECT unnest(i.indkey), pg_catalog.generate_subscripts(i.indkey, 1) FROM pg_index i",
                "SELECT unnest(i.indkey), unnest(generate_series(1, array_length(i.indkey, 1))) FROM pg_catalog.pg_index i",
            ),
        ];
        for (sql, expected) in cases {
            assert_eq!(
                rewritten(sql),
                (expected.to_string(), expected != sql),
                "{sql}"
            );
        }
    }

    #[test]
    fn other_statements_stay_as_written() {
        for sql in [
            "CREATE MATRIX x (3, 3)",
            "select  1",
            "SELECT * FROM information_schema.tables",
        ] {
            assert_eq!(rewritten(sql), (sql.to_string(), false), "{sql}");
        }
    }
}
