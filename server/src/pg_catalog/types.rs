//! PostgreSQL types and OIDs for Arrow types and catalog objects.
//!
//! Built-in types keep PostgreSQL's own OIDs (clients such as psql and JDBC know them).
//! Relations, schemas, functions and databases get OIDs from a hash of their kind and
//! qualified name: the same object has the same OID in every session and after a
//! restart, with no table of OIDs to store.

use datafusion::arrow::datatypes::DataType;

/// OID of namespace `pg_catalog` (PostgreSQL's).
pub(crate) const PG_CATALOG_OID: i64 = 11;
/// OID of namespace `public` (PostgreSQL's).
pub(crate) const PUBLIC_OID: i64 = 2200;
/// OID of namespace `information_schema`.
pub(crate) const INFORMATION_SCHEMA_OID: i64 = 13_000;
/// OID of the one role, `tessera` (PostgreSQL's bootstrap superuser OID).
pub(crate) const OWNER_OID: i64 = 10;
/// Name of the one role.
pub(crate) const OWNER: &str = "tessera";
/// OID of access method `heap` (tables).
pub(crate) const HEAP_AM_OID: i64 = 2;
/// OID of access method `blocks` (arrays).
pub(crate) const BLOCKS_AM_OID: i64 = 9_000;
/// OID of collation `default`.
pub(crate) const DEFAULT_COLLATION_OID: i64 = 100;
/// OID of tablespace `pg_default`.
pub(crate) const DEFAULT_TABLESPACE_OID: i64 = 1663;

/// The first OID PostgreSQL gives user objects; hashed OIDs fall in `[16384, 2^31)`.
const FIRST_USER_OID: u64 = 16_384;

/// A stable OID for an object of `kind` (`"rel"`, `"nsp"`, `"proc"`, `"db"`) named
/// `name` (schema-qualified for relations and functions).
pub(crate) fn object_oid(kind: &str, name: &str) -> i64 {
    // FNV-1a: fixed by definition, so OIDs do not change with the Rust version.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in kind.bytes().chain([0]).chain(name.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (FIRST_USER_OID + hash % ((1u64 << 31) - FIRST_USER_OID)) as i64
}

/// The OID of relation `schema.name`.
pub(crate) fn relation_oid(schema: &str, name: &str) -> i64 {
    object_oid("rel", &format!("{schema}.{name}"))
}

/// The OID of namespace `name`.
pub(crate) fn namespace_oid(name: &str) -> i64 {
    match name {
        "pg_catalog" => PG_CATALOG_OID,
        "public" => PUBLIC_OID,
        "information_schema" => INFORMATION_SCHEMA_OID,
        _ => object_oid("nsp", name),
    }
}

/// A built-in PostgreSQL type.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PgType {
    /// OID.
    pub(crate) oid: i64,
    /// `pg_type.typname`.
    pub(crate) name: &'static str,
    /// What `format_type` prints.
    pub(crate) display: &'static str,
    /// `typlen`: bytes, or -1 for variable length.
    pub(crate) len: i16,
    /// `typcategory`.
    pub(crate) category: &'static str,
    /// OID of the array type of this type (0 for array types).
    pub(crate) array: i64,
    /// OID of the element type (0 unless this is an array type).
    pub(crate) element: i64,
}

const fn t(
    oid: i64,
    name: &'static str,
    display: &'static str,
    len: i16,
    category: &'static str,
    array: i64,
    element: i64,
) -> PgType {
    PgType {
        oid,
        name,
        display,
        len,
        category,
        array,
        element,
    }
}

/// The built-in types Tessera's columns map to (and those psql's queries name).
pub(crate) const PG_TYPES: &[PgType] = &[
    t(16, "bool", "boolean", 1, "B", 1000, 0),
    t(17, "bytea", "bytea", -1, "U", 1001, 0),
    t(18, "char", "\"char\"", 1, "Z", 1002, 0),
    t(19, "name", "name", 64, "S", 1003, 0),
    t(20, "int8", "bigint", 8, "N", 1016, 0),
    t(21, "int2", "smallint", 2, "N", 1005, 0),
    t(22, "int2vector", "int2vector", -1, "A", 1006, 21),
    t(23, "int4", "integer", 4, "N", 1007, 0),
    t(24, "regproc", "regproc", 4, "N", 1008, 0),
    t(25, "text", "text", -1, "S", 1009, 0),
    t(26, "oid", "oid", 4, "N", 1028, 0),
    t(700, "float4", "real", 4, "N", 1021, 0),
    t(701, "float8", "double precision", 8, "N", 1022, 0),
    t(1043, "varchar", "character varying", -1, "S", 1015, 0),
    t(1082, "date", "date", 4, "D", 1182, 0),
    t(1083, "time", "time without time zone", 8, "D", 1183, 0),
    t(
        1114,
        "timestamp",
        "timestamp without time zone",
        8,
        "D",
        1115,
        0,
    ),
    t(
        1184,
        "timestamptz",
        "timestamp with time zone",
        8,
        "D",
        1185,
        0,
    ),
    t(1186, "interval", "interval", 16, "T", 1187, 0),
    t(1700, "numeric", "numeric", -1, "N", 1231, 0),
    t(2205, "regclass", "regclass", 4, "N", 2210, 0),
    t(2206, "regtype", "regtype", 4, "N", 2211, 0),
    t(2249, "record", "record", -1, "P", 2287, 0),
    t(2950, "uuid", "uuid", 16, "U", 2951, 0),
    t(3802, "jsonb", "jsonb", -1, "U", 3807, 0),
    t(1000, "_bool", "boolean[]", -1, "A", 0, 16),
    t(1001, "_bytea", "bytea[]", -1, "A", 0, 17),
    t(1005, "_int2", "smallint[]", -1, "A", 0, 21),
    t(1007, "_int4", "integer[]", -1, "A", 0, 23),
    t(1009, "_text", "text[]", -1, "A", 0, 25),
    t(1016, "_int8", "bigint[]", -1, "A", 0, 20),
    t(1021, "_float4", "real[]", -1, "A", 0, 700),
    t(1022, "_float8", "double precision[]", -1, "A", 0, 701),
    t(1028, "_oid", "oid[]", -1, "A", 0, 26),
    t(1182, "_date", "date[]", -1, "A", 0, 1082),
    t(
        1115,
        "_timestamp",
        "timestamp without time zone[]",
        -1,
        "A",
        0,
        1114,
    ),
    t(1231, "_numeric", "numeric[]", -1, "A", 0, 1700),
];

impl PgType {
    /// The name of its `in`, `out`, `recv` or `send` function, as PostgreSQL names
    /// them (`int4recv`, `date_recv`, `array_recv`).
    pub(crate) fn io_function(&self, kind: &str) -> String {
        const UNDERSCORED: &[&str] = &[
            "date",
            "time",
            "timestamp",
            "timestamptz",
            "interval",
            "numeric",
            "record",
            "uuid",
            "jsonb",
        ];
        if self.name.starts_with('_') {
            format!("array_{kind}")
        } else if UNDERSCORED.contains(&self.name) {
            format!("{}_{kind}", self.name)
        } else {
            format!("{}{kind}", self.name)
        }
    }
}

/// The built-in type with OID `oid`.
pub(crate) fn pg_type_by_oid(oid: i64) -> Option<&'static PgType> {
    PG_TYPES.iter().find(|t| t.oid == oid)
}

/// The built-in type called `name` (`int8`, `bigint`, `double precision`, ...).
pub(crate) fn pg_type_by_name(name: &str) -> Option<&'static PgType> {
    let name = name.trim().trim_start_matches("pg_catalog.");
    PG_TYPES
        .iter()
        .find(|t| t.name.eq_ignore_ascii_case(name) || t.display.eq_ignore_ascii_case(name))
}

/// The PostgreSQL type OID and type modifier (`atttypmod`, -1 for none) for an Arrow
/// type; types with no closer match are `text`.
pub fn pg_type_of(data_type: &DataType) -> (u32, i32) {
    let oid = match data_type {
        DataType::Boolean => 16,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => 21,
        DataType::Int32 | DataType::UInt16 => 23,
        DataType::Int64 | DataType::UInt32 => 20,
        DataType::UInt64 => 1700,
        DataType::Float16 | DataType::Float32 => 700,
        DataType::Float64 => 701,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => 17,
        DataType::FixedSizeBinary(_) => 17,
        DataType::Date32 | DataType::Date64 => 1082,
        DataType::Time32(_) | DataType::Time64(_) => 1083,
        DataType::Timestamp(_, None) => 1114,
        DataType::Timestamp(_, Some(_)) => 1184,
        DataType::Interval(_) | DataType::Duration(_) => 1186,
        DataType::Decimal32(p, s)
        | DataType::Decimal64(p, s)
        | DataType::Decimal128(p, s)
        | DataType::Decimal256(p, s) => {
            return (1700, ((i32::from(*p) << 16) | (i32::from(*s) & 0xffff)) + 4);
        }
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _) => {
            let (element, _) = pg_type_of(f.data_type());
            return (
                PG_TYPES
                    .iter()
                    .find(|t| i64::from(element) == t.oid)
                    .map(|t| t.array as u32)
                    .filter(|a| *a != 0)
                    .unwrap_or(1009),
                -1,
            );
        }
        DataType::Dictionary(_, value) => return pg_type_of(value),
        _ => 25,
    };
    (oid, -1)
}

/// What `format_type(oid, typmod)` prints: `bigint`, `numeric(10,2)`, `text[]`.
pub(crate) fn format_type(oid: i64, typmod: Option<i64>) -> Option<String> {
    let t = pg_type_by_oid(oid)?;
    if t.oid == 1700
        && let Some(m) = typmod.filter(|m| *m >= 4)
    {
        let m = m - 4;
        return Some(format!("numeric({},{})", (m >> 16) & 0xffff, m & 0xffff));
    }
    Some(t.display.to_string())
}

/// Whether a column of this Arrow type is stored out of line (`attstorage` `x`,
/// "extended") in PostgreSQL terms; fixed-width values are `p`, "plain".
pub(crate) fn storage_of(data_type: &DataType) -> &'static str {
    let (oid, _) = pg_type_of(data_type);
    match pg_type_by_oid(i64::from(oid)) {
        Some(t) if t.len < 0 => "x",
        _ => "p",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrow_types_map_to_postgres_types() {
        assert_eq!(pg_type_of(&DataType::Int64), (20, -1));
        assert_eq!(pg_type_of(&DataType::Float64), (701, -1));
        assert_eq!(pg_type_of(&DataType::Utf8View), (25, -1));
        let list = DataType::List(std::sync::Arc::new(
            datafusion::arrow::datatypes::Field::new_list_field(DataType::Float64, true),
        ));
        assert_eq!(pg_type_of(&list), (1022, -1));
        let (oid, m) = pg_type_of(&DataType::Decimal128(10, 2));
        assert_eq!(
            format_type(i64::from(oid), Some(i64::from(m))).as_deref(),
            Some("numeric(10,2)")
        );
        assert_eq!(format_type(701, None).as_deref(), Some("double precision"));
    }

    #[test]
    fn object_oids_are_stable_user_oids() {
        let a = relation_oid("public", "x");
        assert_eq!(a, relation_oid("public", "x"));
        assert_ne!(a, relation_oid("public", "y"));
        assert!((16_384..1 << 31).contains(&a));
    }
}
