//! PostgreSQL's catalog functions that clients call (`pg_table_is_visible`,
//! `format_type`, `obj_description`, ...), as DataFusion scalar UDFs, plus the helpers
//! [`super::rewrite`] turns `::regclass`-style casts into. Functions about things
//! Tessera does not have (privileges, indexes, sizes) give the answer that hides
//! nothing: every privilege is granted, definitions and sizes are `NULL`.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int32Array, Int64Array, ListArray, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type};
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use datafusion::prelude::SessionContext;
use tessera_planner::DEFAULT_SCHEMA;

use super::objects::Sources;
use super::types::{OWNER, format_type, pg_type_by_name, relation_oid};

type Body = Arc<dyn Fn(&[ArrayRef], usize) -> Result<ArrayRef> + Send + Sync>;

/// A catalog function: a name, the argument counts it takes, a result type and a body
/// over whole argument arrays.
struct PgFunction {
    name: &'static str,
    signature: Signature,
    returns: DataType,
    body: Body,
}

impl std::fmt::Debug for PgFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pg_catalog.{}", self.name)
    }
}

impl PartialEq for PgFunction {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for PgFunction {}

impl Hash for PgFunction {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl ScalarUDFImpl for PgFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.returns.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        Ok(ColumnarValue::Array((self.body)(
            &arrays,
            args.number_rows,
        )?))
    }
}

fn function(
    name: &'static str,
    arities: &[usize],
    returns: DataType,
    body: impl Fn(&[ArrayRef], usize) -> Result<ArrayRef> + Send + Sync + 'static,
) -> ScalarUDF {
    let signatures = arities
        .iter()
        .map(|n| match n {
            0 => TypeSignature::Nullary,
            n => TypeSignature::Any(*n),
        })
        .collect();
    with_signature(
        name,
        Signature::one_of(signatures, Volatility::Stable),
        returns,
        body,
    )
}

fn with_signature(
    name: &'static str,
    signature: Signature,
    returns: DataType,
    body: impl Fn(&[ArrayRef], usize) -> Result<ArrayRef> + Send + Sync + 'static,
) -> ScalarUDF {
    ScalarUDF::new_from_impl(PgFunction {
        name,
        signature,
        returns,
        body: Arc::new(body),
    })
}

/// Argument `n` as 64-bit integers (OIDs and the like).
fn ints(args: &[ArrayRef], n: usize) -> Result<Int64Array> {
    let array = datafusion::arrow::compute::cast(&args[n], &DataType::Int64)?;
    Ok(array.as_primitive::<Int64Type>().clone())
}

/// Argument `n` as text.
fn texts(args: &[ArrayRef], n: usize) -> Result<StringArray> {
    let array = datafusion::arrow::compute::cast(&args[n], &DataType::Utf8)?;
    Ok(array.as_string::<i32>().clone())
}

/// `f` of the first argument as an OID, row by row (`NULL` in, `NULL` out).
fn by_oid(args: &[ArrayRef], f: impl Fn(i64) -> Option<String>) -> Result<ArrayRef> {
    let oids = ints(args, 0)?;
    Ok(Arc::new(
        oids.iter().map(|o| o.and_then(&f)).collect::<StringArray>(),
    ))
}

/// A text result that is `NULL` on every row.
fn null_text(_: &[ArrayRef], rows: usize) -> Result<ArrayRef> {
    Ok(Arc::new(StringArray::new_null(rows)))
}

/// A boolean that is `value` where the first argument is not `NULL`.
fn constant_bool(value: bool) -> impl Fn(&[ArrayRef], usize) -> Result<ArrayRef> {
    move |args, rows| {
        Ok(Arc::new(
            (0..rows)
                .map(|i| match args.first() {
                    Some(a) if a.is_null(i) => None,
                    _ => Some(value),
                })
                .collect::<BooleanArray>(),
        ))
    }
}

/// Every function, ready to register.
pub(crate) fn functions(sources: &Arc<Sources>) -> Vec<ScalarUDF> {
    let text = DataType::Utf8;
    let mut all = vec![
        function("pg_get_userbyid", &[1], text.clone(), |a, _| {
            by_oid(a, |_| Some(OWNER.to_string()))
        }),
        function(
            "pg_table_is_visible",
            &[1],
            DataType::Boolean,
            constant_bool(true),
        ),
        function(
            "pg_type_is_visible",
            &[1],
            DataType::Boolean,
            constant_bool(true),
        ),
        function(
            "pg_function_is_visible",
            &[1],
            DataType::Boolean,
            constant_bool(true),
        ),
        function(
            "pg_relation_is_publishable",
            &[1],
            DataType::Boolean,
            constant_bool(false),
        ),
        function("format_type", &[2], text.clone(), |a, _| {
            let (oids, mods) = (ints(a, 0)?, ints(a, 1)?);
            Ok(Arc::new(
                oids.iter()
                    .zip(mods.iter())
                    .map(|(o, m)| o.map(|o| format_type(o, m).unwrap_or_else(|| "???".into())))
                    .collect::<StringArray>(),
            ))
        }),
        // `oids::regtype[]`: each type's name, as format_type gives it.
        function("tessera_regtype_names", &[1], list_of_text(), |a, rows| {
            let Some(list) = a[0].as_list_opt::<i32>() else {
                return Ok(datafusion::arrow::array::new_null_array(
                    &list_of_text(),
                    rows,
                ));
            };
            let oids = datafusion::arrow::compute::cast(list.values(), &DataType::Int64)?;
            let names: StringArray = oids
                .as_primitive::<Int64Type>()
                .iter()
                .map(|o| o.map(|o| format_type(o, None).unwrap_or_else(|| "???".into())))
                .collect();
            Ok(Arc::new(ListArray::try_new(
                Arc::new(Field::new_list_field(DataType::Utf8, true)),
                list.offsets().clone(),
                Arc::new(names),
                list.nulls().cloned(),
            )?))
        }),
        // Tessera keeps defaults and other expressions as SQL text already.
        function("pg_get_expr", &[2, 3], text.clone(), |a, _| {
            Ok(Arc::new(texts(a, 0)?))
        }),
        function("pg_encoding_to_char", &[1], text.clone(), |a, _| {
            by_oid(a, |e| {
                Some(if e == 6 { "UTF8" } else { "SQL_ASCII" }.to_string())
            })
        }),
        function("col_description", &[2], text.clone(), null_text),
        function("shobj_description", &[2], text.clone(), null_text),
        function("pg_get_function_sqlbody", &[1], text.clone(), null_text),
        function("pg_get_viewdef", &[1, 2], text.clone(), null_text),
        function("pg_get_indexdef", &[1, 3], text.clone(), null_text),
        function("pg_get_constraintdef", &[1, 2], text.clone(), null_text),
        function("pg_get_triggerdef", &[1, 2], text.clone(), null_text),
        function("pg_get_partkeydef", &[1], text.clone(), null_text),
        function(
            "pg_get_statisticsobjdef_columns",
            &[1],
            text.clone(),
            null_text,
        ),
        function("pg_table_size", &[1], DataType::Int64, |_, rows| {
            Ok(Arc::new(Int64Array::new_null(rows)))
        }),
        function("pg_relation_size", &[1, 2], DataType::Int64, |_, rows| {
            Ok(Arc::new(Int64Array::new_null(rows)))
        }),
        function(
            "pg_total_relation_size",
            &[1],
            DataType::Int64,
            |_, rows| Ok(Arc::new(Int64Array::new_null(rows))),
        ),
        function("pg_database_size", &[1], DataType::Int64, |_, rows| {
            Ok(Arc::new(Int64Array::new_null(rows)))
        }),
        function("pg_size_pretty", &[1], text.clone(), |a, _| {
            let bytes = ints(a, 0)?;
            Ok(Arc::new(
                bytes
                    .iter()
                    .map(|b| b.map(size_pretty))
                    .collect::<StringArray>(),
            ))
        }),
        function("array_upper", &[2], DataType::Int32, |a, rows| {
            let dims = ints(a, 1)?;
            let lengths: Int32Array = match a[0].as_list_opt::<i32>() {
                Some(list) => (0..rows)
                    .map(|i| {
                        let len = list.value_length(i);
                        (list.is_valid(i) && dims.value(i) == 1 && len > 0).then_some(len)
                    })
                    .collect(),
                None => Int32Array::new_null(rows),
            };
            Ok(Arc::new(lengths))
        }),
        function("current_schemas", &[1], list_of_text(), |a, rows| {
            let implicit = a[0].as_boolean_opt().cloned();
            let mut builder = datafusion::arrow::array::ListBuilder::new(
                datafusion::arrow::array::StringBuilder::new(),
            );
            for i in 0..rows {
                if implicit
                    .as_ref()
                    .is_some_and(|b| b.is_valid(i) && b.value(i))
                {
                    builder.values().append_value("pg_catalog");
                }
                builder.values().append_value(DEFAULT_SCHEMA);
                builder.append(true);
            }
            let list: ListArray = builder.finish();
            Ok(Arc::new(list))
        }),
        // `information_schema._pg_expandarray(a)` before its unnest (see the rewrite):
        // each element with its 1-based position, as `(x, n)`.
        function("tessera_expandarray", &[1], expanded_array(), |a, rows| {
            let Some(list) = a[0].as_list_opt::<i32>() else {
                return Ok(datafusion::arrow::array::new_null_array(
                    &expanded_array(),
                    rows,
                ));
            };
            let values = datafusion::arrow::compute::cast(list.values(), &DataType::Int64)?;
            let positions: Int64Array = list
                .offsets()
                .windows(2)
                .flat_map(|w| 1..=i64::from(w[1] - w[0]))
                .collect();
            let pairs = datafusion::arrow::array::StructArray::try_new(
                expanded_pair(),
                vec![values, Arc::new(positions)],
                None,
            )?;
            Ok(Arc::new(ListArray::try_new(
                Arc::new(Field::new_list_field(
                    DataType::Struct(expanded_pair()),
                    true,
                )),
                list.offsets().clone(),
                Arc::new(pairs),
                list.nulls().cloned(),
            )?))
        }),
        function("tessera_regtype_oid", &[1], DataType::Int64, regtype_oid),
        // The type's OID, or NULL for a type Tessera does not have (psycopg's
        // TypeInfo.fetch asks for `hstore` this way).
        function("to_regtype", &[1], DataType::Int64, regtype_oid),
        function("current_schema", &[0], text.clone(), |_, rows| {
            Ok(Arc::new(StringArray::from(vec![DEFAULT_SCHEMA; rows])))
        }),
        // The protocol server replaces these two with the connection's own values (see
        // `pg::statement::bind_connection_values`); elsewhere the session has no role
        // and no backend of its own: the owner of everything, and this process.
        function("current_user", &[0], text.clone(), |_, rows| {
            Ok(Arc::new(StringArray::from(vec![OWNER; rows])))
        }),
        function("session_user", &[0], text.clone(), |_, rows| {
            Ok(Arc::new(StringArray::from(vec![OWNER; rows])))
        }),
        function("user", &[0], text.clone(), |_, rows| {
            Ok(Arc::new(StringArray::from(vec![OWNER; rows])))
        }),
        function("current_setting", &[1, 2], text.clone(), current_setting),
        function(
            "pg_collation_is_visible",
            &[1],
            DataType::Boolean,
            constant_bool(true),
        ),
        // Tessera has no sequences (SQLAlchemy asks for a column's identity options).
        function("pg_get_serial_sequence", &[2], text.clone(), null_text),
        function("tessera_like_escape", &[2], text.clone(), |a, _| {
            let (patterns, escapes) = (texts(a, 0)?, texts(a, 1)?);
            Ok(Arc::new(
                patterns
                    .iter()
                    .zip(escapes.iter())
                    .map(|(p, e)| Some(like_escape(p?, e?)))
                    .collect::<StringArray>(),
            ))
        }),
        with_signature(
            "json_build_object",
            Signature::variadic_any(Volatility::Stable),
            text.clone(),
            json_build_object,
        ),
        function("quote_ident", &[1], text.clone(), |a, _| {
            let names = texts(a, 0)?;
            Ok(Arc::new(
                names
                    .iter()
                    .map(|n| n.map(quote_ident))
                    .collect::<StringArray>(),
            ))
        }),
    ];
    for name in [
        "has_table_privilege",
        "has_schema_privilege",
        "has_database_privilege",
        "has_function_privilege",
        "has_column_privilege",
        "has_sequence_privilege",
    ] {
        all.push(function(
            name,
            &[2, 3, 4],
            DataType::Boolean,
            constant_bool(true),
        ));
    }
    let s = sources.clone();
    all.push(function(
        "obj_description",
        &[1, 2],
        text.clone(),
        move |a, _| {
            let relations = s.relations();
            by_oid(a, |o| relations.iter().find(|r| r.oid == o)?.description())
        },
    ));
    let s = sources.clone();
    all.push(function(
        "to_regclass",
        &[1],
        DataType::Int64,
        move |a, _| {
            let names = texts(a, 0)?;
            let relations = s.relations();
            Ok(Arc::new(
                names
                    .iter()
                    .map(|n| {
                        let (schema, name) = split_qualified(n?);
                        relations
                            .iter()
                            .find(|r| {
                                r.name == name && schema.as_ref().is_none_or(|s| *s == r.schema)
                            })
                            .map(|r| r.oid)
                            .or_else(|| schema.map(|s| relation_oid(&s, &name)))
                    })
                    .collect::<Int64Array>(),
            ))
        },
    ));
    let s = sources.clone();
    all.push(function(
        "tessera_regclass_name",
        &[1],
        text.clone(),
        move |a, _| {
            let relations = s.relations();
            by_oid(a, |o| {
                relations.iter().find(|r| r.oid == o).map(|r| {
                    if r.schema == DEFAULT_SCHEMA || r.schema == "pg_catalog" {
                        quote_ident(&r.name)
                    } else {
                        format!("{}.{}", quote_ident(&r.schema), quote_ident(&r.name))
                    }
                })
            })
        },
    ));
    let s = sources.clone();
    all.push(function(
        "tessera_regnamespace_name",
        &[1],
        text.clone(),
        move |a, _| {
            let namespaces = s.namespaces();
            by_oid(a, |o| {
                namespaces
                    .iter()
                    .find(|n| n.oid == o)
                    .map(|n| n.name.clone())
            })
        },
    ));
    let s = sources.clone();
    all.push(function(
        "tessera_regproc_name",
        &[1],
        text.clone(),
        move |a, _| {
            by_oid(a, |o| {
                s.functions()
                    .iter()
                    .find(|f| f.oid == o)
                    .map(|f| f.name.clone())
            })
        },
    ));
    let s = sources.clone();
    all.push(function(
        "pg_get_function_result",
        &[1],
        text.clone(),
        move |a, _| {
            by_oid(a, |o| {
                s.functions()
                    .iter()
                    .find(|f| f.oid == o)
                    .map(|f| f.result.clone())
            })
        },
    ));
    for name in [
        "pg_get_function_arguments",
        "pg_get_function_identity_arguments",
    ] {
        let s = sources.clone();
        all.push(function(name, &[1], text.clone(), move |a, _| {
            by_oid(a, |o| {
                s.functions()
                    .iter()
                    .find(|f| f.oid == o)
                    .map(|f| f.arguments.clone())
            })
        }));
    }
    for name in ["current_database", "current_catalog"] {
        let s = sources.clone();
        all.push(function(name, &[0], text.clone(), move |_, rows| {
            Ok(Arc::new(StringArray::from(vec![s.database_name(); rows])))
        }));
    }
    all
}

/// Registers the functions a session does not have yet (DataFusion's own win: a
/// built-in of the same name is never replaced).
pub(crate) fn register(ctx: &SessionContext, sources: &Arc<Sources>) {
    let existing: Vec<String> = ctx.state().scalar_functions().keys().cloned().collect();
    for udf in functions(sources) {
        if !existing.iter().any(|n| n == udf.name()) {
            ctx.register_udf(udf);
        }
    }
}

/// A LIKE pattern that escapes with `escape` (`''`: nothing escapes) as one that escapes
/// with `\\`, the only escape character DataFusion's LIKE takes.
fn like_escape(pattern: &str, escape: &str) -> String {
    let escape = escape.chars().next();
    let mut out = String::with_capacity(pattern.len() + 4);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if Some(c) == escape {
            match chars.next() {
                Some(next @ ('%' | '_' | '\\')) => {
                    out.push('\\');
                    out.push(next);
                }
                Some(next) => out.push(next),
                // PostgreSQL refuses a pattern ending in its escape; match it literally.
                None => push_literal(&mut out, c),
            }
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    out
}

fn push_literal(out: &mut String, c: char) {
    if matches!(c, '%' | '_' | '\\') {
        out.push('\\');
    }
    out.push(c);
}

/// `json_build_object(k1, v1, ...)` as PostgreSQL prints it: `{"k1" : v1, ...}`, numbers
/// and booleans bare, other values as JSON strings.
fn json_build_object(args: &[ArrayRef], rows: usize) -> Result<ArrayRef> {
    if !args.len().is_multiple_of(2) {
        return datafusion::common::plan_err!("argument list must have even number of elements");
    }
    let mut out = Vec::with_capacity(rows);
    for i in 0..rows {
        let mut object = String::from("{");
        for (n, pair) in args.chunks_exact(2).enumerate() {
            if n > 0 {
                object.push_str(", ");
            }
            let key = datafusion::arrow::util::display::array_value_to_string(&pair[0], i)?;
            object.push_str(&json_string(&key));
            object.push_str(" : ");
            let value = &pair[1];
            if value.is_null(i) {
                object.push_str("null");
                continue;
            }
            let shown = datafusion::arrow::util::display::array_value_to_string(value, i)?;
            let bare = value.data_type().is_integer()
                || (value.data_type().is_floating()
                    && shown.parse::<f64>().is_ok_and(f64::is_finite))
                || value.data_type() == &DataType::Boolean;
            object.push_str(&if bare { shown } else { json_string(&shown) });
        }
        object.push('}');
        out.push(object);
    }
    Ok(Arc::new(StringArray::from(out)))
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The OID of the type each name names (`int4`, `integer`, `pg_catalog.text`), else
/// `NULL`.
fn regtype_oid(args: &[ArrayRef], _: usize) -> Result<ArrayRef> {
    let names = texts(args, 0)?;
    Ok(Arc::new(
        names
            .iter()
            .map(|n| n.and_then(pg_type_by_name).map(|t| t.oid))
            .collect::<Int64Array>(),
    ))
}

/// `current_setting(name [, missing_ok])`: a PostgreSQL setting's default (the protocol
/// server answers a literal name with the connection's value before planning). An
/// unknown name is an error (42704) unless `missing_ok`, then `NULL`.
fn current_setting(args: &[ArrayRef], rows: usize) -> Result<ArrayRef> {
    let names = texts(args, 0)?;
    let missing_ok = match args.get(1) {
        Some(a) => Some(
            datafusion::arrow::compute::cast(a, &DataType::Boolean)?
                .as_boolean()
                .clone(),
        ),
        None => None,
    };
    let mut values = Vec::with_capacity(rows);
    for (i, name) in names.iter().enumerate() {
        let Some(name) = name else {
            values.push(None);
            continue;
        };
        match setting_default(&name.to_ascii_lowercase()) {
            Some(v) => values.push(Some(v.to_string())),
            None if missing_ok
                .as_ref()
                .is_some_and(|m| m.is_valid(i) && m.value(i)) =>
            {
                values.push(None)
            }
            None => return Err(unknown_setting(name)),
        }
    }
    Ok(Arc::new(StringArray::from(values)))
}

/// The error for a setting PostgreSQL would not know either.
pub(crate) fn unknown_setting(name: &str) -> datafusion::common::DataFusionError {
    tessera_planner::tessera_error(
        tessera_planner::ErrorKind::UndefinedObject,
        format!("unrecognized configuration parameter \"{name}\""),
    )
}

/// The value a PostgreSQL 15 server reports for a setting clients read (`SHOW`,
/// `current_setting`) before anything sets it, by lowercased name; `None` for a name it
/// does not emulate.
pub(crate) fn setting_default(name: &str) -> Option<&'static str> {
    Some(match name {
        "server_version" => crate::pg::PG_SERVER_VERSION,
        "server_version_num" => crate::pg::PG_SERVER_VERSION_NUM,
        "server_encoding" | "client_encoding" => "UTF8",
        "datestyle" => "ISO, MDY",
        "timezone" | "log_timezone" => "UTC",
        "intervalstyle" => "postgres",
        "standard_conforming_strings" | "integer_datetimes" | "is_superuser" => "on",
        "transaction_isolation" | "default_transaction_isolation" => "read committed",
        "transaction_read_only"
        | "default_transaction_read_only"
        | "in_hot_standby"
        | "transaction_deferrable"
        | "default_transaction_deferrable" => "off",
        "search_path" => "\"$user\", public",
        "max_identifier_length" => "63",
        "extra_float_digits" => "1",
        "bytea_output" => "hex",
        "lc_messages" | "lc_monetary" | "lc_numeric" | "lc_time" | "lc_collate" | "lc_ctype" => "C",
        "application_name" => "",
        "statement_timeout" | "lock_timeout" | "idle_in_transaction_session_timeout" => "0",
        "default_table_access_method" => "heap",
        "default_tablespace" => "",
        _ => return None,
    })
}

/// The fields of one element of `tessera_expandarray`: the value and its position.
fn expanded_pair() -> datafusion::arrow::datatypes::Fields {
    vec![
        Field::new("x", DataType::Int64, true),
        Field::new("n", DataType::Int64, false),
    ]
    .into()
}

/// The functions that answer for the connection a session serves: `pg_backend_pid()`
/// (its backend pid, the process id in an embedded database) and
/// `pg_cancel_backend(pid)` (cancels that backend's statement: the caller's own
/// connections, or any for a superuser; false for a pid with no connection).
pub(crate) fn register_backend(
    ctx: &SessionContext,
    sources: &Arc<Sources>,
    backend: Arc<super::BackendIdentity>,
) {
    let me = Arc::clone(&backend);
    ctx.register_udf(function(
        "pg_backend_pid",
        &[0],
        DataType::Int32,
        move |_, rows| {
            let pid = match me.get() {
                Some((pid, _, _)) => pid,
                None => i32::try_from(std::process::id()).unwrap_or(0),
            };
            Ok(Arc::new(Int32Array::from(vec![pid; rows])))
        },
    ));
    let activity = Arc::clone(&sources.activity);
    // Volatile: it acts, so it runs every time and is never folded.
    ctx.register_udf(with_signature(
        "pg_cancel_backend",
        Signature::any(1, Volatility::Volatile),
        DataType::Boolean,
        move |a, _| {
            let pids = ints(a, 0)?;
            let (user, superuser) = match backend.get() {
                Some((_, user, superuser)) => (user, superuser),
                // An embedded database has no connections to cancel.
                None => (String::new(), false),
            };
            let mut out = Vec::with_capacity(pids.len());
            for pid in pids.iter() {
                let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) else {
                    out.push(None);
                    continue;
                };
                match activity.cancel(pid, &user, superuser) {
                    Ok(()) => out.push(Some(true)),
                    Err(crate::activity::CancelRefused::NoSuchBackend) => out.push(Some(false)),
                    Err(crate::activity::CancelRefused::NotYours) => {
                        return Err(tessera_planner::tessera_error(
                            tessera_planner::ErrorKind::InsufficientPrivilege,
                            format!(
                                "pg_cancel_backend: backend {pid} belongs to another user; only a superuser may cancel it"
                            ),
                        ));
                    }
                }
            }
            Ok(Arc::new(BooleanArray::from(out)))
        },
    ));
}

/// `List<Struct<x: Int64, n: Int64>>`, what `tessera_expandarray` returns.
fn expanded_array() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(
        DataType::Struct(expanded_pair()),
        true,
    )))
}

fn list_of_text() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))
}

/// `"schema"."name"` or `name` as `(schema, name)`, unquoting and lowercasing unquoted
/// parts as PostgreSQL does.
fn split_qualified(text: &str) -> (Option<String>, String) {
    let part = |p: &str| {
        let p = p.trim();
        match p.strip_prefix('"').and_then(|p| p.strip_suffix('"')) {
            Some(quoted) => quoted.replace("\"\"", "\""),
            None => p.to_lowercase(),
        }
    };
    match text.split_once('.') {
        Some((schema, name)) => (Some(part(schema)), part(name)),
        None => (None, part(text)),
    }
}

/// An identifier as PostgreSQL prints it: quoted unless lowercase letters, digits and
/// underscores.
fn quote_ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// `pg_size_pretty`: bytes, kB, MB, GB, TB, rounding as PostgreSQL does (switch unit
/// at 10240 of the smaller one).
fn size_pretty(bytes: i64) -> String {
    let mut value = bytes;
    for unit in ["bytes", "kB", "MB", "GB", "TB"] {
        if value.abs() < 10 * 1024 || unit == "TB" {
            return format!("{value} {unit}");
        }
        value = (value + 512) / 1024;
    }
    format!("{value} PB")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_match_postgres() {
        assert_eq!(size_pretty(8192), "8192 bytes");
        assert_eq!(size_pretty(20_000), "20 kB");
        assert_eq!(quote_ident("emp"), "emp");
        assert_eq!(quote_ident("Emp"), "\"Emp\"");
        assert_eq!(
            split_qualified("pg_catalog.pg_class"),
            (Some("pg_catalog".into()), "pg_class".into())
        );
        assert_eq!(split_qualified("\"X\""), (None, "X".into()));
        // SQLAlchemy's autoescape: `pg/_%` is `pg_` then anything.
        assert_eq!(like_escape("pg/_%", "/"), "pg\\_%");
        assert_eq!(like_escape("a//b\\c", "/"), "a/b\\\\c");
        assert_eq!(like_escape("a_%", ""), "a_%");
        assert_eq!(json_string("a\"b\n"), "\"a\\\"b\\n\"");
    }
}
