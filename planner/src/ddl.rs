//! Tessera's own statements (`CREATE ARRAY`, `CREATE MATRIX`, `COPY`, ...), parsed
//! before DataFusion sees the rest of the SQL.
//!
//! [`parse`] splits a script into statements with the SQL tokenizer DataFusion re-exports,
//! so a semicolon inside a string, a quoted identifier, a comment or a `$$` string never
//! ends a statement. It recognises Tessera's statements and hands every other statement
//! on, as its exact source text, in [`Statement::Sql`].
//!
//! ```text
//! CREATE ARRAY [IF NOT EXISTS] name (attr DOUBLE [PRECISION] | FLOAT8, ...)
//!     DIMENSIONS (dim start:end BLOCK len, ...) [WITH (option = value, ...)]
//! CREATE MATRIX [IF NOT EXISTS] name (rows, cols) [BLOCK (r, c)] [SPARSE | DENSE] [WITH (...)]
//! CREATE MATRIX [IF NOT EXISTS] name [(rows, cols)] [BLOCK (r, c)] [SPARSE | DENSE] [WITH (...)] AS query
//! DROP ARRAY | MATRIX [IF EXISTS] name [, name ...]
//! COPY name [(col, ...)] FROM 'path' | STDIN [WITH] [(option [=] value, ...)]
//! COPY name [(col, ...)] TO 'path' | STDOUT [WITH] [(option [=] value, ...)]
//! SHOW ARRAYS | MATRICES
//! DESCRIBE | DESC name
//! VERIFY [ARRAY | MATRIX name]
//! ```

use std::fmt::Display;

use datafusion::common::{DataFusionError, Result, TableReference, plan_datafusion_err};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::ParserError;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, Tokenizer, Word};
use tessera_storage::AttributeType;

use crate::error::{ErrorKind, tessera_error};

/// One statement of a script: either Tessera's own, or SQL for DataFusion.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// A statement Tessera plans itself.
    Tessera(TesseraStatement),
    /// Any other statement, as its exact source text (without the ending `;`), to be
    /// handed to DataFusion unchanged.
    Sql(String),
}

/// A parsed Tessera statement. Identifiers are normalised the SQL way: unquoted ones are
/// lowercased, `"Quoted"` ones kept exactly.
#[derive(Debug, Clone, PartialEq)]
pub enum TesseraStatement {
    /// `CREATE ARRAY name (attr DOUBLE, ...) DIMENSIONS (dim start:end BLOCK len, ...)`.
    CreateArray {
        /// Name of the new array.
        name: String,
        /// `IF NOT EXISTS` was given: an existing array is not an error.
        if_not_exists: bool,
        /// Attributes in the order written, with their types.
        attributes: Vec<(String, AttributeType)>,
        /// Dimensions in the order written.
        dimensions: Vec<DimensionSpec>,
        /// `WITH (...)` options in the order written; keys lowercased.
        options: Vec<(String, OptionValue)>,
    },
    /// `CREATE MATRIX name (rows, cols) ...` or `CREATE MATRIX name ... AS query`.
    CreateMatrix {
        /// Name of the new matrix.
        name: String,
        /// `IF NOT EXISTS` was given: an existing matrix is not an error.
        if_not_exists: bool,
        /// `(rows, cols)`; always present unless `query` is.
        shape: Option<(u64, u64)>,
        /// `BLOCK (r, c)`; `None` means the block size is chosen automatically.
        block: Option<(u64, u64)>,
        /// `SPARSE` or `DENSE`; `None` means chosen per block by sparsity.
        format: Option<MatrixFormat>,
        /// `WITH (...)` options in the order written; keys lowercased.
        options: Vec<(String, OptionValue)>,
        /// The exact source text after `AS`, to be planned by DataFusion.
        query: Option<String>,
    },
    /// `DROP ARRAY name, ...` or `DROP MATRIX name, ...` (the two are the same).
    DropArrays {
        /// The arrays to drop, in the order written.
        names: Vec<String>,
        /// `IF EXISTS` was given: a missing array is not an error.
        if_exists: bool,
    },
    /// `COPY name [(col, ...)] FROM ... | TO ...`. `name` may be an array or a table; the
    /// planner decides.
    Copy {
        /// The array or table copied into or out of.
        name: TableReference,
        /// Columns listed after the name; empty when none were.
        columns: Vec<String>,
        /// Which way the data goes, and where from or to.
        direction: CopyDirection,
        /// Options such as `FORMAT csv` or `HEADER true`, in the order written; keys
        /// lowercased.
        options: Vec<(String, OptionValue)>,
    },
    /// `SHOW ARRAYS` (or `SHOW MATRICES`).
    ShowArrays,
    /// `DESCRIBE name` / `DESC name`; `name` may be an array or a table.
    Describe {
        /// The array or table to describe.
        name: TableReference,
    },
    /// `VERIFY` (the whole store) or `VERIFY ARRAY name` / `VERIFY MATRIX name`: reads
    /// every byte and returns one row per problem found.
    Verify {
        /// The array to check; `None`: the catalog and every array.
        array: Option<String>,
    },
    /// `ALTER ARRAY name REPARTITION [WITH (shards = n)]` (or `ALTER MATRIX`): rewrites
    /// the array as a new version placed by the live hash placement.
    AlterArrayRepartition {
        /// The array to rewrite.
        name: String,
        /// `WITH (shards = n)`: the new shard count; `None` keeps the array's.
        shards: Option<u32>,
    },
}

/// One dimension of `CREATE ARRAY`: `name start:end BLOCK block`, with `start:end`
/// inclusive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DimensionSpec {
    /// Dimension name, e.g. `i`.
    pub name: String,
    /// First index (inclusive).
    pub start: i64,
    /// Last index (inclusive); never less than `start`.
    pub end: i64,
    /// Block length along this dimension; at least 1.
    pub block: u64,
}

/// The storage format a `CREATE MATRIX` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatrixFormat {
    /// `SPARSE`: every block stored compressed (CSR).
    Sparse,
    /// `DENSE`: every block stored dense (row-major).
    Dense,
}

/// Which way a `COPY` goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyDirection {
    /// `COPY name FROM ...`: load into `name`.
    From(CopyTarget),
    /// `COPY name TO ...`: write `name` out.
    To(CopyTarget),
}

/// Where a `COPY` reads or writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyTarget {
    /// A file path, as written between the quotes.
    File(String),
    /// `STDIN` (for `FROM`) or `STDOUT` (for `TO`): the client connection.
    Stdio,
}

/// The value of an option in `WITH (...)` or a `COPY` option list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionValue {
    /// A quoted string: `FORMAT 'npy'`.
    String(String),
    /// A number, as written (with its sign): `SHARDS 16`.
    Number(String),
    /// `TRUE` or `FALSE`; an option written without a value (`HEADER`) is `TRUE`.
    Bool(bool),
    /// A bare word, normalised like an identifier: `FORMAT csv`.
    Ident(String),
}

/// Splits `sql` into statements at top-level semicolons and parses each.
///
/// Semicolons inside strings, quoted identifiers, comments and dollar-quoted strings do
/// not split; empty statements (including comment-only ones) are dropped. Tessera's own
/// statements come back as [`Statement::Tessera`], every other statement as
/// [`Statement::Sql`] with its exact source text. A mistake in any statement fails the
/// whole script, with a message that names what was expected and the line and column.
///
/// ```
/// use tessera_planner::ddl::{parse, Statement, TesseraStatement};
/// let statements = parse("SHOW ARRAYS; SELECT ';' AS s").unwrap();
/// assert_eq!(statements, vec![
///     Statement::Tessera(TesseraStatement::ShowArrays),
///     Statement::Sql("SELECT ';' AS s".to_string()),
/// ]);
/// ```
pub fn parse(sql: &str) -> Result<Vec<Statement>> {
    let dialect = PostgreSqlDialect {};
    let spanned = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| {
            syntax_error(ParserError::TokenizerError(format!(
                "{} at {}",
                lowercase_first(&e.message),
                position(e.location)
            )))
        })?;
    let source = SourceMap::new(sql);

    let mut statements = Vec::new();
    let mut current: Vec<SourceToken<'_>> = Vec::new();
    for spanned in spanned {
        match spanned.token {
            Token::Whitespace(_) | Token::EOF => {}
            Token::SemiColon => {
                if !current.is_empty() {
                    statements.push(parse_statement(sql, &current)?);
                    current.clear();
                }
            }
            token => {
                let start_byte = source.byte_offset(spanned.span.start);
                let end_byte = source.byte_offset(spanned.span.end);
                current.push(SourceToken {
                    token,
                    start: spanned.span.start,
                    end: spanned.span.end,
                    start_byte,
                    end_byte,
                    text: sql.get(start_byte..end_byte).unwrap_or(""),
                });
            }
        }
    }
    if !current.is_empty() {
        statements.push(parse_statement(sql, &current)?);
    }
    Ok(statements)
}

/// Parses one statement's significant tokens (no whitespace, comments or `;`; never empty).
fn parse_statement(sql: &str, tokens: &[SourceToken<'_>]) -> Result<Statement> {
    check_nesting(tokens)?;
    let mut parser = Parser {
        sql,
        tokens,
        pos: 0,
    };
    let ours = if parser.parse_keyword("CREATE") {
        if parser.parse_keyword("ARRAY") {
            Some(parser.create_array()?)
        } else if parser.parse_keyword("MATRIX") {
            Some(parser.create_matrix()?)
        } else {
            None
        }
    } else if parser.parse_keyword("DROP") {
        if parser.parse_keyword("ARRAY") || parser.parse_keyword("MATRIX") {
            Some(parser.drop_arrays()?)
        } else {
            None
        }
    } else if parser.peek_keyword("COPY")
        && matches!(parser.peek_at(1), Some(t) if matches!(t.token, Token::Word(_)))
    {
        // `COPY (query) TO ...` is DataFusion's; so is `COPY t TO 'f' STORED AS ...`.
        parser.pos += 1;
        parser.copy()?
    } else if parser.peek_keyword("ALTER")
        && (is_keyword(parser.peek_at(1), "ARRAY") || is_keyword(parser.peek_at(1), "MATRIX"))
    {
        parser.pos += 2;
        Some(parser.alter_array_repartition()?)
    } else if parser.parse_keyword("SHOW") {
        if parser.parse_keyword("ARRAYS") || parser.parse_keyword("MATRICES") {
            parser.expect_end("", "after SHOW ARRAYS")?;
            Some(TesseraStatement::ShowArrays)
        } else {
            None
        }
    } else if parser.parse_keyword("VERIFY") {
        let array = if parser.parse_keyword("ARRAY") || parser.parse_keyword("MATRIX") {
            Some(parser.identifier("an array name", "after VERIFY ARRAY")?)
        } else {
            None
        };
        parser.expect_end(
            if array.is_none() {
                "ARRAY, MATRIX or "
            } else {
                ""
            },
            "after VERIFY",
        )?;
        Some(TesseraStatement::Verify { array })
    } else if parser.parse_keyword("DESCRIBE") || parser.parse_keyword("DESC") {
        // Only `DESCRIBE name`; any other form (`DESCRIBE SELECT ...`) is DataFusion's.
        match parser.object_name("", "") {
            Ok(name) if parser.at_end() => Some(TesseraStatement::Describe { name }),
            _ => None,
        }
    } else {
        None
    };
    Ok(match ours {
        Some(statement) => Statement::Tessera(statement),
        None => Statement::Sql(parser.text_from(0).to_string()),
    })
}

/// The deepest expression or plan a statement may build, as [`nesting_estimate`]
/// counts it. Deeper statements fail with [`ErrorKind::StatementTooComplex`] (54001)
/// before anything parses them: the parser, the planner and the executor all recurse
/// once per level, and a few thousand levels overflow a thread's stack.
pub const MAX_NESTING: usize = 200;

/// Refuses a statement whose [`nesting_estimate`] exceeds [`MAX_NESTING`].
fn check_nesting(tokens: &[SourceToken<'_>]) -> Result<()> {
    let depth = nesting_estimate(tokens.iter().map(|t| &t.token));
    if depth > MAX_NESTING {
        let at = tokens
            .first()
            .map(|t| position(t.start))
            .unwrap_or_default();
        return Err(tessera_error(
            ErrorKind::StatementTooComplex,
            format!(
                "statement too complex: its expressions nest or chain about {depth} levels deep, more than the {MAX_NESTING} allowed (statement at {at})"
            ),
        ));
    }
    Ok(())
}

/// An upper bound, from the tokens alone, of how deep the syntax tree of a statement
/// is, computed without recursion. Every parenthesis, bracket or `CASE` opens a group,
/// one level deeper than its enclosing group's own depth (a group written first in a
/// chain `(...) + b + c` ends up at the bottom of it). Within a group, a chain of
/// operators `a + b + c` nests one node per operator, and an operator of looser
/// binding starts new chains for the tighter ones (`a = 1 OR a = 2 OR ...` is as deep
/// as its ORs plus one), so a group counts its operators by precedence class: the
/// longest chain of each class, summed. A comma starts a new list item (in a `FROM`
/// list it joins, and counts as an operator). Operators it does not know it counts in
/// the tightest class: the estimate may only err upwards.
pub fn nesting_estimate<'a>(tokens: impl IntoIterator<Item = &'a Token>) -> usize {
    /// Precedence classes, loosest first.
    const CLASSES: usize = 6;
    const SET_OR_JOIN: usize = 0;
    const OR: usize = 1;
    const AND: usize = 2;
    const NOT: usize = 3;
    const COMPARISON: usize = 4;
    const TIGHT: usize = 5;
    /// One group: per precedence class, the operators of the current chain and of
    /// the longest one so far; the deepest group inside it; whether it is in a FROM
    /// list.
    #[derive(Default)]
    struct Group {
        current: [usize; CLASSES],
        longest: [usize; CLASSES],
        deepest_inside: usize,
        in_from: bool,
    }
    impl Group {
        /// Ends the chains of class `from` and tighter.
        fn end_chains(&mut self, from: usize) {
            for class in from..CLASSES {
                self.longest[class] = self.longest[class].max(self.current[class]);
                self.current[class] = 0;
            }
        }

        /// How deep the group is: its own chains, itself, the deepest group inside.
        fn depth(&mut self) -> usize {
            self.end_chains(0);
            self.longest.iter().sum::<usize>() + 1 + self.deepest_inside
        }
    }
    let mut groups = vec![Group::default()];
    for token in tokens {
        let word = match token {
            Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
            _ => None,
        };
        let class = match (token, word.as_deref()) {
            (_, Some("CASE")) | (Token::LParen | Token::LBracket | Token::LBrace, _) => {
                groups.push(Group::default());
                None
            }
            (_, Some("END")) | (Token::RParen | Token::RBracket | Token::RBrace, _) => {
                if groups.len() > 1
                    && let Some(mut group) = groups.pop()
                    && let Some(outer) = groups.last_mut()
                {
                    outer.deepest_inside = outer.deepest_inside.max(group.depth());
                }
                None
            }
            // The branches of a CASE nest side by side, as list items do.
            (_, Some("WHEN" | "THEN" | "ELSE")) => {
                if let Some(group) = groups.last_mut() {
                    group.end_chains(0);
                }
                None
            }
            (Token::Comma, _) => match groups.last_mut() {
                Some(group) if group.in_from => Some(SET_OR_JOIN),
                Some(group) => {
                    group.end_chains(0);
                    None
                }
                None => None,
            },
            (_, Some("FROM")) => {
                if let Some(group) = groups.last_mut() {
                    group.in_from = true;
                }
                None
            }
            (
                _,
                Some(
                    "WHERE" | "GROUP" | "HAVING" | "ORDER" | "LIMIT" | "OFFSET" | "FETCH"
                    | "WINDOW" | "QUALIFY" | "SELECT" | "VALUES" | "SET" | "RETURNING",
                ),
            ) => {
                if let Some(group) = groups.last_mut() {
                    group.in_from = false;
                }
                None
            }
            (_, Some("UNION" | "INTERSECT" | "EXCEPT")) => {
                if let Some(group) = groups.last_mut() {
                    group.in_from = false;
                }
                Some(SET_OR_JOIN)
            }
            (_, Some("JOIN")) => Some(SET_OR_JOIN),
            (_, Some("OR")) => Some(OR),
            (_, Some("AND")) => Some(AND),
            (_, Some("NOT")) => Some(NOT),
            (
                _,
                Some(
                    "IS" | "LIKE" | "ILIKE" | "SIMILAR" | "IN" | "BETWEEN" | "ESCAPE" | "OVERLAPS",
                ),
            ) => Some(COMPARISON),
            (_, Some("COLLATE" | "AT")) => Some(TIGHT),
            (
                Token::Eq
                | Token::DoubleEq
                | Token::Neq
                | Token::Lt
                | Token::Gt
                | Token::LtEq
                | Token::GtEq
                | Token::Spaceship,
                _,
            ) => Some(COMPARISON),
            (
                Token::Word(_)
                | Token::Whitespace(_)
                | Token::EOF
                | Token::SemiColon
                | Token::Period
                | Token::Number(..)
                | Token::Placeholder(_)
                | Token::Char(_)
                | Token::SingleQuotedString(_)
                | Token::DoubleQuotedString(_)
                | Token::DollarQuotedString(_)
                | Token::EscapedStringLiteral(_)
                | Token::NationalStringLiteral(_)
                | Token::HexStringLiteral(_)
                | Token::UnicodeStringLiteral(_)
                | Token::SingleQuotedByteStringLiteral(_)
                | Token::DoubleQuotedByteStringLiteral(_),
                _,
            ) => None,
            // Every other token is an operator of some kind.
            _ => Some(TIGHT),
        };
        if let Some(class) = class
            && let Some(group) = groups.last_mut()
        {
            group.end_chains(class + 1);
            group.current[class] += 1;
        }
    }
    // Close the groups left open (an unbalanced statement is the parser's to refuse).
    let mut depth = 0;
    while let Some(mut group) = groups.pop() {
        group.deepest_inside = group.deepest_inside.max(depth);
        depth = group.depth();
    }
    depth
}

/// A significant token with its place in the source.
struct SourceToken<'a> {
    token: Token,
    start: Location,
    end: Location,
    start_byte: usize,
    end_byte: usize,
    /// The token exactly as written.
    text: &'a str,
}

/// Maps the tokenizer's locations (1-based line and column, counted in characters) to
/// byte offsets in the source.
struct SourceMap {
    /// Byte offset of every character, then the source length.
    char_offsets: Vec<usize>,
    /// Index (into `char_offsets`) of the first character of every line.
    line_starts: Vec<usize>,
}

impl SourceMap {
    fn new(sql: &str) -> Self {
        let mut char_offsets = Vec::with_capacity(sql.len() + 1);
        let mut line_starts = vec![0];
        for (index, (byte, ch)) in sql.char_indices().enumerate() {
            char_offsets.push(byte);
            if ch == '\n' {
                line_starts.push(index + 1);
            }
        }
        char_offsets.push(sql.len());
        Self {
            char_offsets,
            line_starts,
        }
    }

    /// The byte offset of `location`; the end of the source if it lies outside.
    fn byte_offset(&self, location: Location) -> usize {
        let end = self.char_offsets.last().copied().unwrap_or(0);
        let line = usize::try_from(location.line).ok();
        let column = usize::try_from(location.column).ok();
        line.and_then(|line| line.checked_sub(1))
            .and_then(|line| self.line_starts.get(line))
            .zip(column.and_then(|column| column.checked_sub(1)))
            .and_then(|(start, column)| start.checked_add(column))
            .and_then(|index| self.char_offsets.get(index))
            .copied()
            .unwrap_or(end)
    }
}

/// A recursive-descent parser over one statement's significant tokens.
struct Parser<'s, 't> {
    sql: &'s str,
    tokens: &'t [SourceToken<'s>],
    pos: usize,
}

impl<'s, 't> Parser<'s, 't> {
    // ---- statements ----------------------------------------------------------------

    /// After `CREATE ARRAY`.
    fn create_array(&mut self) -> Result<TesseraStatement> {
        let if_not_exists = self.if_not_exists()?;
        let name = self.identifier("an array name", "after CREATE ARRAY")?;

        self.expect(
            &Token::LParen,
            "`(`",
            format!("to open the attribute list of array {name}"),
        )?;
        let mut attributes = Vec::new();
        loop {
            let attribute = self.identifier(
                "an attribute name",
                format!("in the attribute list of array {name}"),
            )?;
            let ty = self.attribute_type(&attribute)?;
            let more = self.list_continues(format!("after attribute {attribute}"))?;
            attributes.push((attribute, ty));
            if !more {
                break;
            }
        }

        self.expect_keyword(
            "DIMENSIONS",
            format!("after the attribute list of array {name}"),
        )?;
        self.expect(
            &Token::LParen,
            "`(`",
            format!("to open the dimension list of array {name}"),
        )?;
        let mut dimensions = Vec::new();
        loop {
            let dimension = self.dimension(&name)?;
            let more = self.list_continues(format!("after dimension {}", dimension.name))?;
            dimensions.push(dimension);
            if !more {
                break;
            }
        }

        let options = if self.parse_keyword("WITH") {
            self.option_list("after WITH")?
        } else {
            Vec::new()
        };
        self.expect_end(
            if options.is_empty() { "WITH" } else { "" },
            format!("after the definition of array {name}"),
        )?;
        Ok(TesseraStatement::CreateArray {
            name,
            if_not_exists,
            attributes,
            dimensions,
            options,
        })
    }

    /// `dim start:end BLOCK len` inside `DIMENSIONS (...)`.
    fn dimension(&mut self, array: &str) -> Result<DimensionSpec> {
        let name = self.identifier(
            "a dimension name",
            format!("in the dimension list of array {array}"),
        )?;
        let start_pos = self.pos;
        let start = self.signed_integer(format!("as the start of dimension {name} (start:end)"))?;
        self.expect(
            &Token::Colon,
            "`:`",
            format!("between the start and end of dimension {name}"),
        )?;
        let end = self.signed_integer(format!("as the end of dimension {name} (start:end)"))?;
        if end < start {
            return Err(plan_datafusion_err!(
                "dimension {name} has range {start}:{end}, whose end is before its start, at {}",
                position(self.location_of(start_pos))
            ));
        }
        self.expect_keyword("BLOCK", format!("after dimension range {start}:{end}"))?;
        let block = self.positive_integer(
            format!("after BLOCK in dimension {name}"),
            format!("the block length of dimension {name}"),
        )?;
        Ok(DimensionSpec {
            name,
            start,
            end,
            block,
        })
    }

    /// The type after an attribute name: `DOUBLE [PRECISION]` or `FLOAT8`.
    fn attribute_type(&mut self, attribute: &str) -> Result<AttributeType> {
        let Some(token) = self.peek() else {
            return Err(self.expected("a type (DOUBLE)", format!("after attribute {attribute}")));
        };
        let Token::Word(word) = &token.token else {
            return Err(self.expected("a type (DOUBLE)", format!("after attribute {attribute}")));
        };
        let unquoted = word.quote_style.is_none();
        if unquoted && word.value.eq_ignore_ascii_case("DOUBLE") {
            self.pos += 1;
            self.parse_keyword("PRECISION");
            Ok(AttributeType::Double)
        } else if unquoted && word.value.eq_ignore_ascii_case("FLOAT8") {
            self.pos += 1;
            Ok(AttributeType::Double)
        } else {
            Err(plan_datafusion_err!(
                "unsupported type {} for attribute {attribute} at {}: only DOUBLE is supported",
                word.value.to_ascii_uppercase(),
                position(token.start)
            ))
        }
    }

    /// After `CREATE MATRIX`.
    fn create_matrix(&mut self) -> Result<TesseraStatement> {
        let if_not_exists = self.if_not_exists()?;
        let name = self.identifier("a matrix name", "after CREATE MATRIX")?;
        let shape_pos = self.pos;
        let shape = if self.peek_is(&Token::LParen) {
            Some(self.pair(&format!("the shape (rows, cols) of matrix {name}"))?)
        } else {
            None
        };

        let mut block = None;
        let mut format = None;
        let mut options = None;
        let mut query = None;
        while !self.at_end() {
            let clause_pos = self.pos;
            if self.parse_keyword("BLOCK") {
                if block.is_some() {
                    return Err(self.duplicate("BLOCK", clause_pos));
                }
                block = Some(self.pair(&format!("the block size (r, c) of matrix {name}"))?);
            } else if self.peek_keyword("SPARSE") || self.peek_keyword("DENSE") {
                if format.is_some() {
                    return Err(self.duplicate("SPARSE or DENSE", clause_pos));
                }
                format = Some(if self.parse_keyword("SPARSE") {
                    MatrixFormat::Sparse
                } else {
                    self.pos += 1;
                    MatrixFormat::Dense
                });
            } else if self.parse_keyword("WITH") {
                if options.is_some() {
                    return Err(self.duplicate("WITH", clause_pos));
                }
                options = Some(self.option_list("after WITH")?);
            } else if self.parse_keyword("AS") {
                if self.at_end() {
                    return Err(self.expected("a query", "after AS"));
                }
                query = Some(self.text_from(self.pos).to_string());
                self.pos = self.tokens.len();
            } else {
                let expected = if shape.is_none() && block.is_none() && format.is_none() {
                    "`(rows, cols)`, BLOCK, SPARSE, DENSE, WITH or AS"
                } else {
                    "BLOCK, SPARSE, DENSE, WITH, AS or end of statement"
                };
                return Err(self.expected(expected, format!("after matrix {name}")));
            }
        }
        if shape.is_none() && query.is_none() {
            self.pos = shape_pos;
            return Err(self.expected(
                "`(rows, cols)`",
                format!("after matrix name {name} (only CREATE MATRIX ... AS <query> may leave the shape out)"),
            ));
        }
        Ok(TesseraStatement::CreateMatrix {
            name,
            if_not_exists,
            shape,
            block,
            format,
            options: options.unwrap_or_default(),
            query,
        })
    }

    /// `(a, b)` of two positive integers; `what` names the pair in messages.
    fn pair(&mut self, what: &str) -> Result<(u64, u64)> {
        self.expect(&Token::LParen, "`(`", format!("to open {what}"))?;
        let first = self.positive_integer(format!("as the first number of {what}"), what)?;
        self.expect(
            &Token::Comma,
            "`,`",
            format!("after the first number of {what}"),
        )?;
        let second = self.positive_integer(format!("as the second number of {what}"), what)?;
        self.expect(&Token::RParen, "`)`", format!("to close {what}"))?;
        Ok((first, second))
    }

    /// After `DROP ARRAY` or `DROP MATRIX`.
    fn drop_arrays(&mut self) -> Result<TesseraStatement> {
        let if_exists = if self.peek_keyword("IF") && is_keyword(self.peek_at(1), "EXISTS") {
            self.pos += 2;
            true
        } else {
            false
        };
        let mut names = vec![self.identifier("an array name", "after DROP ARRAY")?];
        while self.consume(&Token::Comma) {
            names.push(self.identifier("an array name", "after `,` in DROP ARRAY")?);
        }
        let last = names.last().cloned().unwrap_or_default();
        self.expect_end("`,`", format!("after array name {last}"))?;
        Ok(TesseraStatement::DropArrays { names, if_exists })
    }

    /// After `ALTER ARRAY` / `ALTER MATRIX`: `name REPARTITION [WITH (shards = n)]`.
    fn alter_array_repartition(&mut self) -> Result<TesseraStatement> {
        let name = self.identifier("an array name", "after ALTER ARRAY")?;
        self.expect_keyword("REPARTITION", format!("after ALTER ARRAY {name}"))?;
        let mut shards = None;
        if self.parse_keyword("WITH") {
            for (key, value) in self.option_list("after REPARTITION")? {
                let number = match &value {
                    OptionValue::Number(n) if key == "shards" => n.parse::<u32>().ok(),
                    _ if key == "shards" => None,
                    _ => {
                        return Err(plan_datafusion_err!(
                            "ALTER ARRAY {name} REPARTITION: unknown option {key}; the one option is shards"
                        ));
                    }
                };
                match number {
                    Some(n) if n > 0 => shards = Some(n),
                    _ => {
                        return Err(plan_datafusion_err!(
                            "ALTER ARRAY {name} REPARTITION: option shards must be a positive whole number"
                        ));
                    }
                }
            }
        }
        self.expect_end(
            if shards.is_none() { "WITH" } else { "" },
            format!("after ALTER ARRAY {name} REPARTITION"),
        )?;
        Ok(TesseraStatement::AlterArrayRepartition { name, shards })
    }

    /// After `COPY`, when a name follows. `None` for DataFusion's own `COPY t TO 'f'
    /// STORED AS ... | PARTITIONED BY ... | OPTIONS (...)`.
    fn copy(&mut self) -> Result<Option<TesseraStatement>> {
        let name = self.object_name("a table or array name", "after COPY")?;
        let mut columns = Vec::new();
        if self.consume(&Token::LParen) {
            loop {
                let column = self.identifier("a column name", "in the column list of COPY")?;
                let more = self.list_continues(format!("after column {column}"))?;
                columns.push(column);
                if !more {
                    break;
                }
            }
        }
        let direction = if self.parse_keyword("FROM") {
            CopyDirection::From(self.copy_target("FROM", "STDIN")?)
        } else if self.parse_keyword("TO") {
            let target = self.copy_target("TO", "STDOUT")?;
            if ["STORED", "PARTITIONED", "OPTIONS"]
                .iter()
                .any(|keyword| self.peek_keyword(keyword))
            {
                return Ok(None);
            }
            CopyDirection::To(target)
        } else {
            return Err(self.expected("FROM or TO", format!("after COPY {name}")));
        };
        let options = if self.peek_keyword("WITH") && is_legacy_copy_option(self.peek_at(1)) {
            self.pos += 1;
            self.legacy_copy_options()?
        } else if self.parse_keyword("WITH") {
            self.option_list("after WITH")?
        } else if self.peek_is(&Token::LParen) {
            self.option_list("")?
        } else {
            self.legacy_copy_options()?
        };
        self.expect_end(
            if options.is_empty() {
                "WITH (options)"
            } else {
                ""
            },
            "after the COPY target",
        )?;
        Ok(Some(TesseraStatement::Copy {
            name,
            columns,
            direction,
            options,
        }))
    }

    /// PostgreSQL's options without parentheses, as psql's `\copy` passes them on
    /// (`CSV HEADER`, `DELIMITER ','`, `NULL AS ''`, `BINARY`, ...), as the options of the
    /// parenthesised form.
    fn legacy_copy_options(&mut self) -> Result<Vec<(String, OptionValue)>> {
        let mut options: Vec<(String, OptionValue)> = Vec::new();
        while is_legacy_copy_option(self.peek()) {
            let at = self.pos;
            let Some(word) = self.peek().and_then(|t| match &t.token {
                Token::Word(w) => Some(w.value.to_ascii_lowercase()),
                _ => None,
            }) else {
                break;
            };
            self.pos += 1;
            let (key, value) = match word.as_str() {
                "csv" | "binary" => ("format".to_string(), OptionValue::Ident(word)),
                "header" => (word, OptionValue::Bool(true)),
                _ => {
                    self.parse_keyword("AS");
                    let Some(text) = self.peek().and_then(|t| string_value(&t.token)) else {
                        return Err(self.expected("a quoted string", format!("after {word}")));
                    };
                    self.pos += 1;
                    (word, OptionValue::String(text))
                }
            };
            if options.iter().any(|(existing, _)| *existing == key) {
                return Err(plan_datafusion_err!(
                    "option {key} is given twice at {}",
                    position(self.location_of(at))
                ));
            }
            options.push((key, value));
        }
        Ok(options)
    }

    /// `'path'` or the stdio keyword after `FROM` / `TO`.
    fn copy_target(&mut self, direction: &str, stdio: &str) -> Result<CopyTarget> {
        if self.parse_keyword(stdio) {
            return Ok(CopyTarget::Stdio);
        }
        match self.peek().and_then(|token| string_value(&token.token)) {
            Some(path) => {
                self.pos += 1;
                Ok(CopyTarget::File(path))
            }
            None => Err(self.expected(
                format!("a quoted file path or {stdio}"),
                format!("after {direction}"),
            )),
        }
    }

    // ---- pieces --------------------------------------------------------------------

    /// `IF NOT EXISTS`, if present.
    fn if_not_exists(&mut self) -> Result<bool> {
        if self.peek_keyword("IF") && is_keyword(self.peek_at(1), "NOT") {
            self.pos += 2;
            self.expect_keyword("EXISTS", "after IF NOT")?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// `(key [=] [value], ...)`; a key without a value is `TRUE`.
    fn option_list(&mut self, context: &str) -> Result<Vec<(String, OptionValue)>> {
        let open_context = if context.is_empty() {
            "to open the option list".to_string()
        } else {
            format!("{context} to open the option list")
        };
        self.expect(&Token::LParen, "`(`", open_context)?;
        let mut options: Vec<(String, OptionValue)> = Vec::new();
        loop {
            let key_pos = self.pos;
            let key = self
                .identifier("an option name", "in the option list")?
                .to_lowercase();
            self.consume(&Token::Eq);
            let value = self.option_value(&key)?;
            if options.iter().any(|(existing, _)| *existing == key) {
                return Err(plan_datafusion_err!(
                    "option {key} is given twice at {}",
                    position(self.location_of(key_pos))
                ));
            }
            let more = self.list_continues(format!("after option {key}"))?;
            options.push((key, value));
            if !more {
                break;
            }
        }
        Ok(options)
    }

    /// The value of option `key`, if any.
    fn option_value(&mut self, key: &str) -> Result<OptionValue> {
        let Some(token) = self.peek() else {
            return Err(self.expected("an option value", format!("after option {key}")));
        };
        if let Some(string) = string_value(&token.token) {
            self.pos += 1;
            return Ok(OptionValue::String(string));
        }
        match &token.token {
            Token::Comma | Token::RParen => Ok(OptionValue::Bool(true)),
            Token::Word(word)
                if word.quote_style.is_none() && word.value.eq_ignore_ascii_case("TRUE") =>
            {
                self.pos += 1;
                Ok(OptionValue::Bool(true))
            }
            Token::Word(word)
                if word.quote_style.is_none() && word.value.eq_ignore_ascii_case("FALSE") =>
            {
                self.pos += 1;
                Ok(OptionValue::Bool(false))
            }
            Token::Word(_) => Ok(OptionValue::Ident(self.identifier("", "")?)),
            Token::Number(number, _) => {
                self.pos += 1;
                Ok(OptionValue::Number(number.clone()))
            }
            Token::Minus | Token::Plus => {
                let sign = if token.token == Token::Minus { "-" } else { "" };
                self.pos += 1;
                match self.peek().map(|token| &token.token) {
                    Some(Token::Number(number, _)) => {
                        let number = format!("{sign}{number}");
                        self.pos += 1;
                        Ok(OptionValue::Number(number))
                    }
                    _ => Err(self.expected("a number", format!("after the sign of option {key}"))),
                }
            }
            _ => Err(self.expected("an option value", format!("after option {key}"))),
        }
    }

    /// An identifier, normalised: unquoted lowercased, quoted kept exactly.
    fn identifier(&mut self, what: &str, context: impl Display) -> Result<String> {
        match self.peek() {
            Some(SourceToken {
                token: Token::Word(word),
                start,
                ..
            }) => {
                if word.quote_style.is_some() && word.value.is_empty() {
                    return Err(syntax_error(ParserError::ParserError(format!(
                        "zero-length quoted identifier at {}",
                        position(*start)
                    ))));
                }
                let name = normalize(word);
                self.pos += 1;
                Ok(name)
            }
            _ => Err(self.expected(what, context)),
        }
    }

    /// `name`, `schema.name` or `catalog.schema.name`.
    fn object_name(&mut self, what: &str, context: impl Display) -> Result<TableReference> {
        let mut parts = vec![self.identifier(what, context)?];
        while self.consume(&Token::Period) {
            parts.push(self.identifier("a name", "after `.`")?);
        }
        match <[String; 3]>::try_from(parts) {
            Ok([catalog, schema, table]) => Ok(TableReference::full(catalog, schema, table)),
            Err(parts) => match <[String; 2]>::try_from(parts) {
                Ok([schema, table]) => Ok(TableReference::partial(schema, table)),
                Err(mut parts) if parts.len() == 1 => {
                    Ok(TableReference::bare(parts.pop().unwrap_or_default()))
                }
                Err(parts) => Err(syntax_error(ParserError::ParserError(format!(
                    "name {} has {} parts; expected at most catalog.schema.name, at {}",
                    parts.join("."),
                    parts.len(),
                    position(self.location_of(self.pos.saturating_sub(1)))
                )))),
            },
        }
    }

    /// An optionally signed integer that fits in an `i64`.
    fn signed_integer(&mut self, context: String) -> Result<i64> {
        let negative = if self.consume(&Token::Minus) {
            true
        } else {
            self.consume(&Token::Plus);
            false
        };
        let (digits, location) = self.digits("an integer", &context)?;
        let text = if negative {
            format!("-{digits}")
        } else {
            digits
        };
        text.parse::<i64>().map_err(|_| {
            plan_datafusion_err!(
                "integer {text} at {} does not fit in a 64-bit signed integer",
                position(location)
            )
        })
    }

    /// An integer of at least 1 that fits in a `u64`; `what` names it in messages.
    fn positive_integer(&mut self, context: String, what: impl Display) -> Result<u64> {
        let (digits, location) = self.digits("a positive integer", &context)?;
        let value = digits.parse::<u64>().map_err(|_| {
            plan_datafusion_err!(
                "integer {digits} at {} does not fit in a 64-bit unsigned integer",
                position(location)
            )
        })?;
        if value == 0 {
            return Err(plan_datafusion_err!(
                "{what} must be at least 1, but is 0 at {}",
                position(location)
            ));
        }
        Ok(value)
    }

    /// An unsigned integer literal's digits (`_` separators removed) and its location.
    fn digits(&mut self, what: &str, context: &str) -> Result<(String, Location)> {
        if let Some(SourceToken {
            token: Token::Number(number, _),
            start,
            ..
        }) = self.peek()
        {
            let digits: String = number.chars().filter(|c| *c != '_').collect();
            if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) {
                let start = *start;
                self.pos += 1;
                return Ok((digits, start));
            }
        }
        Err(self.expected(what, context))
    }

    // ---- token plumbing ------------------------------------------------------------

    fn peek(&self) -> Option<&'t SourceToken<'s>> {
        self.tokens.get(self.pos)
    }

    fn peek_at(&self, ahead: usize) -> Option<&'t SourceToken<'s>> {
        self.tokens.get(self.pos.saturating_add(ahead))
    }

    fn at_end(&self) -> bool {
        self.pos >= self.tokens.len()
    }

    fn peek_is(&self, token: &Token) -> bool {
        self.peek().is_some_and(|next| next.token == *token)
    }

    /// Consumes the next token if it is `token`.
    fn consume(&mut self, token: &Token) -> bool {
        let found = self.peek_is(token);
        if found {
            self.pos += 1;
        }
        found
    }

    fn expect(&mut self, token: &Token, shown: &str, context: impl Display) -> Result<()> {
        if self.consume(token) {
            Ok(())
        } else {
            Err(self.expected(shown, context))
        }
    }

    fn peek_keyword(&self, keyword: &str) -> bool {
        is_keyword(self.peek(), keyword)
    }

    /// Consumes the next token if it is the (unquoted, any case) `keyword`.
    fn parse_keyword(&mut self, keyword: &str) -> bool {
        let found = self.peek_keyword(keyword);
        if found {
            self.pos += 1;
        }
        found
    }

    fn expect_keyword(&mut self, keyword: &str, context: impl Display) -> Result<()> {
        if self.parse_keyword(keyword) {
            Ok(())
        } else {
            Err(self.expected(keyword, context))
        }
    }

    /// After a list item: `,` (more follow) or `)` (the list ends).
    fn list_continues(&mut self, context: String) -> Result<bool> {
        if self.consume(&Token::Comma) {
            Ok(true)
        } else if self.consume(&Token::RParen) {
            Ok(false)
        } else {
            Err(self.expected("`,` or `)`", context))
        }
    }

    /// Fails unless the statement ends here; `alternatives` lists what else could follow.
    fn expect_end(&self, alternatives: &str, context: impl Display) -> Result<()> {
        if self.at_end() {
            Ok(())
        } else if alternatives.is_empty() {
            Err(self.expected("end of statement", context))
        } else {
            Err(self.expected(format!("{alternatives} or end of statement"), context))
        }
    }

    /// "expected {what} {context}, found {next token} at line L, column C".
    fn expected(&self, what: impl Display, context: impl Display) -> DataFusionError {
        let context = context.to_string();
        let separator = if context.is_empty() { "" } else { " " };
        let found = match self.peek() {
            Some(token) => format!("`{}`", shorten(token.text)),
            None => "end of statement".to_string(),
        };
        syntax_error(ParserError::ParserError(format!(
            "expected {what}{separator}{context}, found {found} at {}",
            position(self.location_of(self.pos))
        )))
    }

    fn duplicate(&self, clause: &str, at: usize) -> DataFusionError {
        syntax_error(ParserError::ParserError(format!(
            "{clause} is given twice at {}",
            position(self.location_of(at))
        )))
    }

    /// Where token `index` starts; the end of the statement when past its last token.
    fn location_of(&self, index: usize) -> Location {
        match (self.tokens.get(index), self.tokens.last()) {
            (Some(token), _) => token.start,
            (None, Some(last)) => last.end,
            (None, None) => Location { line: 1, column: 1 },
        }
    }

    /// The exact source text from token `index` to the end of the statement.
    fn text_from(&self, index: usize) -> &'s str {
        match (self.tokens.get(index), self.tokens.last()) {
            (Some(first), Some(last)) => {
                self.sql.get(first.start_byte..last.end_byte).unwrap_or("")
            }
            _ => "",
        }
    }
}

fn is_keyword(token: Option<&SourceToken<'_>>, keyword: &str) -> bool {
    matches!(
        token,
        Some(SourceToken { token: Token::Word(word), .. })
            if word.quote_style.is_none() && word.value.eq_ignore_ascii_case(keyword)
    )
}

/// SQL identifier rules, as DataFusion applies them: unquoted lowercased, quoted kept.
fn normalize(word: &Word) -> String {
    match word.quote_style {
        Some(_) => word.value.clone(),
        None => word.value.to_ascii_lowercase(),
    }
}

/// The value of a string literal token (`'...'`, `E'...'`, `$$...$$`, `U&'...'`).
fn string_value(token: &Token) -> Option<String> {
    match token {
        Token::SingleQuotedString(value)
        | Token::EscapedStringLiteral(value)
        | Token::UnicodeStringLiteral(value)
        | Token::NationalStringLiteral(value) => Some(value.clone()),
        Token::DollarQuotedString(dollar) => Some(dollar.value.clone()),
        _ => None,
    }
}

fn position(location: Location) -> String {
    format!("line {}, column {}", location.line, location.column)
}

/// At most 40 characters of a token's text, for messages.
fn shorten(text: &str) -> String {
    const LIMIT: usize = 40;
    if text.chars().count() <= LIMIT {
        text.to_string()
    } else {
        let head: String = text.chars().take(LIMIT).collect();
        format!("{head}...")
    }
}

fn lowercase_first(message: &str) -> String {
    let mut chars = message.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn syntax_error(error: ParserError) -> DataFusionError {
    DataFusionError::SQL(Box::new(error), None)
}

/// Whether `token` starts one of PostgreSQL's unparenthesised COPY options.
fn is_legacy_copy_option(token: Option<&SourceToken<'_>>) -> bool {
    const WORDS: [&str; 7] = [
        "CSV",
        "BINARY",
        "HEADER",
        "DELIMITER",
        "NULL",
        "QUOTE",
        "ESCAPE",
    ];
    matches!(token.map(|t| &t.token), Some(Token::Word(w))
        if WORDS.iter().any(|k| w.value.eq_ignore_ascii_case(k)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TesseraError;
    use proptest::prelude::*;

    fn one(sql: &str) -> TesseraStatement {
        match parse(sql).unwrap().as_slice() {
            [Statement::Tessera(statement)] => statement.clone(),
            other => panic!("expected one Tessera statement from {sql:?}, got {other:?}"),
        }
    }

    fn sql(text: &str) -> Statement {
        Statement::Sql(text.to_string())
    }

    /// The error message, and whether it is a syntax error (`SQL`) or a plan error.
    fn error(sql: &str) -> (String, &'static str) {
        match parse(sql) {
            Err(DataFusionError::SQL(e, _)) => match *e {
                ParserError::ParserError(m) | ParserError::TokenizerError(m) => (m, "syntax"),
                other => panic!("unexpected parser error {other:?}"),
            },
            Err(DataFusionError::Plan(m)) => (m, "plan"),
            other => panic!("expected an error from {sql:?}, got {other:?}"),
        }
    }

    /// "line L, column C" of the `nth` occurrence of `needle`, computed from the text.
    fn at(sql: &str, needle: &str, nth: usize) -> String {
        let byte = sql.match_indices(needle).nth(nth).unwrap().0;
        let before = &sql[..byte];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = sql[line_start..byte].chars().count() + 1;
        format!("line {line}, column {column}")
    }

    fn depth(sql: &str) -> usize {
        let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
            .tokenize()
            .unwrap();
        nesting_estimate(&tokens)
    }

    /// The estimate against depths counted by hand.
    #[test]
    fn nesting_is_estimated_from_tokens() {
        assert_eq!(depth("SELECT 1"), 1);
        // A chain nests one node per operator.
        assert_eq!(depth("SELECT 1 + 1 + 1"), 3);
        assert_eq!(depth("SELECT a AND b OR c"), 3);
        // A looser operator starts new chains for the tighter ones.
        let ors: Vec<String> = (0..900).map(|k| format!("a = {k}")).collect();
        assert_eq!(depth(&format!("SELECT 1 WHERE {}", ors.join(" OR "))), 901);
        assert_eq!(depth("SELECT 1 * 2 + 3 * 4 + 5"), 5);
        // A group first in a chain ends up at its bottom.
        let first = format!("SELECT ((1 + 1)){}", " + 1".repeat(600));
        assert_eq!(depth(&first), 604);
        // A parenthesis opens a level; a comma starts a new list item.
        assert_eq!(depth("SELECT f(1 + 1, 2)"), 3);
        assert_eq!(depth("SELECT (1 + (1 + 1))"), 5);
        assert_eq!(
            depth("INSERT INTO m VALUES (0, 0, -1), (1, 1, -2), (2, 2, -3)"),
            3
        );
        // CASE branches sit side by side.
        let case = format!(
            "SELECT CASE {} END",
            (0..500)
                .map(|k| format!("WHEN a = {k} THEN {k}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        assert_eq!(depth(&case), 3);
        // UNION chains and FROM lists join.
        assert_eq!(depth("SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3"), 3);
        // (`*` counts as an operator: the estimate may only err upwards.)
        assert_eq!(depth("SELECT * FROM a, b, c WHERE x = 1, 2"), 5);
    }

    #[test]
    fn statements_nested_too_deeply_are_statement_too_complex() {
        let chain = format!("SELECT {}", vec!["1"; 2000].join("+"));
        let e = parse(&chain).unwrap_err();
        assert_eq!(
            TesseraError::find(&e).map(TesseraError::kind),
            Some(ErrorKind::StatementTooComplex),
            "{e}"
        );
        let parens = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
        assert!(parse(&parens).is_err());
        // Within the limit, and a long flat list: parsed.
        assert!(parse(&format!("SELECT {}", vec!["1"; 190].join("+"))).is_ok());
        let values: Vec<String> = (0..20_000).map(|k| format!("({k}, 0, -1.5)")).collect();
        assert!(parse(&format!("INSERT INTO m VALUES {}", values.join(", "))).is_ok());
    }

    fn options(pairs: &[(&str, OptionValue)]) -> Vec<(String, OptionValue)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn dim(name: &str, start: i64, end: i64, block: u64) -> DimensionSpec {
        DimensionSpec {
            name: name.into(),
            start,
            end,
            block,
        }
    }

    // ---- CREATE ARRAY ----------------------------------------------------------------

    #[test]
    fn create_array_from_the_design() {
        let statement = one(
            "CREATE ARRAY temps (t DOUBLE) DIMENSIONS (station 0:999 BLOCK 100, day 0:364 BLOCK 365);",
        );
        assert_eq!(
            statement,
            TesseraStatement::CreateArray {
                name: "temps".into(),
                if_not_exists: false,
                attributes: vec![("t".into(), AttributeType::Double)],
                dimensions: vec![dim("station", 0, 999, 100), dim("day", 0, 364, 365)],
                options: vec![],
            }
        );
    }

    #[test]
    fn create_array_types_case_quotes_negative_ranges_and_options() {
        let statement = one(
            "create array if not exists \"Weather\" (t Double Precision, \"P\" float8, w DOUBLE)\n\
             dimensions (\"X\" -10:-1 block 5, y -3:+3 BLOCK 7) with (shards = 16, Layout = 'grid', compress, check = false, note = \"Mixed\", lo = -2.5)",
        );
        assert_eq!(
            statement,
            TesseraStatement::CreateArray {
                name: "Weather".into(),
                if_not_exists: true,
                attributes: vec![
                    ("t".into(), AttributeType::Double),
                    ("P".into(), AttributeType::Double),
                    ("w".into(), AttributeType::Double),
                ],
                dimensions: vec![dim("X", -10, -1, 5), dim("y", -3, 3, 7)],
                options: options(&[
                    ("shards", OptionValue::Number("16".into())),
                    ("layout", OptionValue::String("grid".into())),
                    ("compress", OptionValue::Bool(true)),
                    ("check", OptionValue::Bool(false)),
                    ("note", OptionValue::Ident("Mixed".into())),
                    ("lo", OptionValue::Number("-2.5".into())),
                ]),
            }
        );
    }

    #[test]
    fn create_array_extreme_and_single_cell_ranges() {
        let statement = one(
            "CREATE ARRAY a (v DOUBLE) DIMENSIONS (i -9223372036854775808:9223372036854775807 BLOCK 18446744073709551615, j 5:5 BLOCK 1)",
        );
        let TesseraStatement::CreateArray { dimensions, .. } = statement else {
            panic!()
        };
        assert_eq!(
            dimensions,
            vec![dim("i", i64::MIN, i64::MAX, u64::MAX), dim("j", 5, 5, 1)]
        );
    }

    #[test]
    fn an_array_may_be_named_if() {
        let TesseraStatement::CreateArray {
            name,
            if_not_exists,
            ..
        } = one("CREATE ARRAY if (v DOUBLE) DIMENSIONS (i 0:1 BLOCK 1)")
        else {
            panic!()
        };
        assert_eq!((name.as_str(), if_not_exists), ("if", false));
    }

    // ---- CREATE MATRIX ---------------------------------------------------------------

    #[test]
    fn create_matrix_forms() {
        assert_eq!(
            one("CREATE MATRIX x (1000000, 100) BLOCK (10000, 100);"),
            TesseraStatement::CreateMatrix {
                name: "x".into(),
                if_not_exists: false,
                shape: Some((1_000_000, 100)),
                block: Some((10_000, 100)),
                format: None,
                options: vec![],
                query: None,
            }
        );
        assert_eq!(
            one("Create Matrix If Not Exists \"M\" (3, 4) sparse"),
            TesseraStatement::CreateMatrix {
                name: "M".into(),
                if_not_exists: true,
                shape: Some((3, 4)),
                block: None,
                format: Some(MatrixFormat::Sparse),
                options: vec![],
                query: None,
            }
        );
        // Optional clauses in any order.
        assert_eq!(
            one("CREATE MATRIX m (3, 4) WITH (partitioning 'rows') DENSE BLOCK (2, 2)"),
            TesseraStatement::CreateMatrix {
                name: "m".into(),
                if_not_exists: false,
                shape: Some((3, 4)),
                block: Some((2, 2)),
                format: Some(MatrixFormat::Dense),
                options: options(&[("partitioning", OptionValue::String("rows".into()))]),
                query: None,
            }
        );
    }

    #[test]
    fn create_matrix_as_keeps_the_exact_query_text() {
        let query = "SELECT *\n  FROM matmul(t(x), x) -- gram ; matrix\n  WHERE v <> 0 /* ; */";
        let script = format!("CREATE MATRIX g AS {query};\nSELECT 1");
        let statements = parse(&script).unwrap();
        assert_eq!(
            statements,
            vec![
                Statement::Tessera(TesseraStatement::CreateMatrix {
                    name: "g".into(),
                    if_not_exists: false,
                    shape: None,
                    block: None,
                    format: None,
                    options: vec![],
                    // From the first token after AS to the last; the trailing comment is not part.
                    query: Some(query.trim_end_matches(" /* ; */").to_string()),
                }),
                sql("SELECT 1"),
            ]
        );
        assert_eq!(
            one(
                "CREATE MATRIX g (2, 3) BLOCK (1, 1) SPARSE WITH (k = v) AS  select  'a;b' , $$;$$"
            ),
            TesseraStatement::CreateMatrix {
                name: "g".into(),
                if_not_exists: false,
                shape: Some((2, 3)),
                block: Some((1, 1)),
                format: Some(MatrixFormat::Sparse),
                options: options(&[("k", OptionValue::Ident("v".into()))]),
                query: Some("select  'a;b' , $$;$$".to_string()),
            }
        );
    }

    #[test]
    fn query_text_is_exact_after_multibyte_characters() {
        let TesseraStatement::CreateMatrix { query, .. } =
            one("CREATE MATRIX \"größe\" AS SELECT 'ü€' AS \"Ω\"")
        else {
            panic!()
        };
        assert_eq!(query.as_deref(), Some("SELECT 'ü€' AS \"Ω\""));
    }

    // ---- DROP ------------------------------------------------------------------------

    #[test]
    fn alter_array_repartition() {
        assert_eq!(
            one("ALTER ARRAY a REPARTITION"),
            TesseraStatement::AlterArrayRepartition {
                name: "a".into(),
                shards: None
            }
        );
        assert_eq!(
            one("alter matrix \"B\" repartition with (SHARDS = 8)"),
            TesseraStatement::AlterArrayRepartition {
                name: "B".into(),
                shards: Some(8)
            }
        );
        assert!(error("ALTER ARRAY a").0.contains("REPARTITION"));
        assert!(
            error("ALTER ARRAY a REPARTITION WITH (shards = 0)")
                .0
                .contains("positive")
        );
        assert!(
            error("ALTER ARRAY a REPARTITION WITH (copies 2)")
                .0
                .contains("unknown option")
        );
        assert!(error("ALTER ARRAY a REPARTITION now").0.contains("WITH"));
        assert_eq!(
            parse("ALTER TABLE t ADD COLUMN c INT").unwrap(),
            vec![sql("ALTER TABLE t ADD COLUMN c INT")]
        );
    }

    #[test]
    fn drop_arrays_and_matrices() {
        assert_eq!(
            one("DROP ARRAY a"),
            TesseraStatement::DropArrays {
                names: vec!["a".into()],
                if_exists: false
            }
        );
        assert_eq!(
            one("drop matrix if exists A, \"B\" ,c"),
            TesseraStatement::DropArrays {
                names: vec!["a".into(), "B".into(), "c".into()],
                if_exists: true,
            }
        );
        assert_eq!(parse("DROP TABLE t").unwrap(), vec![sql("DROP TABLE t")]);
    }

    // ---- COPY ------------------------------------------------------------------------

    #[test]
    fn copy_from_and_to() {
        assert_eq!(
            one(
                "COPY x FROM 'x.csv' WITH (FORMAT csv, HEADER true, DELIMITER ',', LAYOUT triples)"
            ),
            TesseraStatement::Copy {
                name: TableReference::bare("x"),
                columns: vec![],
                direction: CopyDirection::From(CopyTarget::File("x.csv".into())),
                options: options(&[
                    ("format", OptionValue::Ident("csv".into())),
                    ("header", OptionValue::Bool(true)),
                    ("delimiter", OptionValue::String(",".into())),
                    ("layout", OptionValue::Ident("triples".into())),
                ]),
            }
        );
        assert_eq!(
            one("copy \"X\" to 'it''s.npy' with (format = 'npy')"),
            TesseraStatement::Copy {
                name: TableReference::bare("X"),
                columns: vec![],
                direction: CopyDirection::To(CopyTarget::File("it's.npy".into())),
                options: options(&[("format", OptionValue::String("npy".into()))]),
            }
        );
        assert_eq!(
            one("COPY s.t (i, J, \"V\") FROM STDIN (FORMAT csv)"),
            TesseraStatement::Copy {
                name: TableReference::partial("s", "t"),
                columns: vec!["i".into(), "j".into(), "V".into()],
                direction: CopyDirection::From(CopyTarget::Stdio),
                options: options(&[("format", OptionValue::Ident("csv".into()))]),
            }
        );
        assert_eq!(
            one("COPY c.s.t TO STDOUT"),
            TesseraStatement::Copy {
                name: TableReference::full("c", "s", "t"),
                columns: vec![],
                direction: CopyDirection::To(CopyTarget::Stdio),
                options: vec![],
            }
        );
        // PostgreSQL's options without parentheses, as psql's \copy sends them.
        for text in [
            "COPY m TO STDOUT CSV HEADER DELIMITER AS ';' NULL ''",
            "COPY m TO STDOUT WITH CSV HEADER DELIMITER ';' NULL AS ''",
        ] {
            assert_eq!(
                one(text),
                TesseraStatement::Copy {
                    name: TableReference::bare("m"),
                    columns: vec![],
                    direction: CopyDirection::To(CopyTarget::Stdio),
                    options: options(&[
                        ("format", OptionValue::Ident("csv".into())),
                        ("header", OptionValue::Bool(true)),
                        ("delimiter", OptionValue::String(";".into())),
                        ("null", OptionValue::String("".into())),
                    ]),
                },
                "{text}"
            );
        }
    }

    #[test]
    fn datafusion_copy_forms_pass_through() {
        for text in [
            "COPY (SELECT * FROM t) TO 'out.csv'",
            "COPY t TO 'out.parquet' STORED AS PARQUET",
            "COPY t TO 'dir/' PARTITIONED BY (a) OPTIONS (format parquet)",
        ] {
            assert_eq!(parse(text).unwrap(), vec![sql(text)], "{text}");
        }
    }

    // ---- SHOW / DESCRIBE / everything else -------------------------------------------

    #[test]
    fn show_and_describe() {
        assert_eq!(one("SHOW ARRAYS"), TesseraStatement::ShowArrays);
        assert_eq!(one("show matrices;"), TesseraStatement::ShowArrays);
        assert_eq!(one("VERIFY"), TesseraStatement::Verify { array: None });
        assert_eq!(
            one("verify matrix \"M\";"),
            TesseraStatement::Verify {
                array: Some("M".into())
            }
        );
        assert_eq!(
            one("VERIFY ARRAY m"),
            TesseraStatement::Verify {
                array: Some("m".into())
            }
        );
        assert!(parse("VERIFY m").is_err());
        assert!(parse("VERIFY ARRAY").is_err());
        assert_eq!(
            one("DESCRIBE x"),
            TesseraStatement::Describe {
                name: TableReference::bare("x")
            }
        );
        assert_eq!(
            one("desc Public.\"Emp\""),
            TesseraStatement::Describe {
                name: TableReference::partial("public", "Emp")
            }
        );
        for text in [
            "SHOW TABLES",
            "SHOW ALL",
            "DESCRIBE SELECT 1",
            "DESC t extra",
        ] {
            assert_eq!(parse(text).unwrap(), vec![sql(text)], "{text}");
        }
    }

    #[test]
    fn other_statements_pass_through_unchanged() {
        let script = "SELECT dep, count(*) FROM emp GROUP BY dep;\n\
                      INSERT INTO x SELECT i, j, v FROM staging ;\n\
                      CREATE EXTERNAL TABLE emp STORED AS PARQUET LOCATION 'emp.parquet';\
                      EXPLAIN SELECT * FROM matmul(x, w);SET tessera.matmul_strategy = 'cpmm';\
                      CREATE TABLE t (a INT);CREATE OR REPLACE VIEW v AS SELECT 1";
        assert_eq!(
            parse(script).unwrap(),
            vec![
                sql("SELECT dep, count(*) FROM emp GROUP BY dep"),
                sql("INSERT INTO x SELECT i, j, v FROM staging"),
                sql("CREATE EXTERNAL TABLE emp STORED AS PARQUET LOCATION 'emp.parquet'"),
                sql("EXPLAIN SELECT * FROM matmul(x, w)"),
                sql("SET tessera.matmul_strategy = 'cpmm'"),
                sql("CREATE TABLE t (a INT)"),
                sql("CREATE OR REPLACE VIEW v AS SELECT 1"),
            ]
        );
    }

    #[test]
    fn semicolons_inside_strings_identifiers_comments_and_dollar_quotes_do_not_split() {
        let script = "SELECT 'a;b', \"c;d\" -- e;f\n FROM t; ;;\n\
                      /* g; /* nested; */ h; */ SELECT $$i;j$$, $tag$k;$$;l$tag$, E'm\\';n';\n\
                      -- only a comment;\n  ;\n\
                      COPY x FROM 'p;q.csv' WITH (DELIMITER ';')";
        assert_eq!(
            parse(script).unwrap(),
            vec![
                sql("SELECT 'a;b', \"c;d\" -- e;f\n FROM t"),
                sql("SELECT $$i;j$$, $tag$k;$$;l$tag$, E'm\\';n'"),
                Statement::Tessera(TesseraStatement::Copy {
                    name: TableReference::bare("x"),
                    columns: vec![],
                    direction: CopyDirection::From(CopyTarget::File("p;q.csv".into())),
                    options: options(&[("delimiter", OptionValue::String(";".into()))]),
                }),
            ]
        );
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse(" ; -- nothing\n ; /* */").unwrap(), vec![]);
    }

    // ---- errors ----------------------------------------------------------------------

    #[test]
    fn missing_parts_are_named_with_their_position() {
        let cases: &[(&str, String)] = &[
            ("CREATE ARRAY", "expected an array name after CREATE ARRAY, found end of statement at line 1, column 13".into()),
            (
                "CREATE ARRAY a (v DOUBLE) DIMENSIONS (i 0:99 BLOCKS 10)",
                format!("expected BLOCK after dimension range 0:99, found `BLOCKS` at {}", at("CREATE ARRAY a (v DOUBLE) DIMENSIONS (i 0:99 BLOCKS 10)", "BLOCKS", 0)),
            ),
            (
                "CREATE ARRAY a (v DOUBLE) DIMENSIONS (i 0:99)",
                "expected BLOCK after dimension range 0:99, found `)` at line 1, column 45".into(),
            ),
            (
                "CREATE ARRAY a (v DOUBLE)",
                "expected DIMENSIONS after the attribute list of array a, found end of statement at line 1, column 26".into(),
            ),
            (
                "CREATE ARRAY a (v) DIMENSIONS (i 0:9 BLOCK 1)",
                "expected a type (DOUBLE) after attribute v, found `)` at line 1, column 18".into(),
            ),
            (
                "CREATE ARRAY a (v DOUBLE) DIMENSIONS (i 0 9 BLOCK 1)",
                "expected `:` between the start and end of dimension i, found `9` at line 1, column 43".into(),
            ),
            (
                "CREATE ARRAY a (v DOUBLE) DIMENSIONS (i 0:x BLOCK 1)",
                "expected an integer as the end of dimension i (start:end), found `x` at line 1, column 43".into(),
            ),
            (
                "CREATE ARRAY a (v DOUBLE) DIMENSIONS (i 0:1.5 BLOCK 1)",
                "expected an integer as the end of dimension i (start:end), found `1.5` at line 1, column 43".into(),
            ),
            (
                "CREATE ARRAY a (v DOUBLE, ) DIMENSIONS (i 0:9 BLOCK 1)",
                "expected an attribute name in the attribute list of array a, found `)` at line 1, column 27".into(),
            ),
            (
                "CREATE MATRIX m BLOCK (2, 2)",
                "expected `(rows, cols)` after matrix name m (only CREATE MATRIX ... AS <query> may leave the shape out), found `BLOCK` at line 1, column 17".into(),
            ),
            (
                "CREATE MATRIX m (2, 2) AS",
                "expected a query after AS, found end of statement at line 1, column 26".into(),
            ),
            (
                "CREATE MATRIX m (2 2)",
                "expected `,` after the first number of the shape (rows, cols) of matrix m, found `2` at line 1, column 20".into(),
            ),
            (
                "DROP ARRAY IF EXISTS",
                "expected an array name after DROP ARRAY, found end of statement at line 1, column 21".into(),
            ),
            (
                "COPY x 'f.csv'",
                "expected FROM or TO after COPY x, found `'f.csv'` at line 1, column 8".into(),
            ),
            (
                "COPY x FROM",
                "expected a quoted file path or STDIN after FROM, found end of statement at line 1, column 12".into(),
            ),
            (
                "COPY x FROM STDOUT",
                "expected a quoted file path or STDIN after FROM, found `STDOUT` at line 1, column 13".into(),
            ),
            (
                "COPY x FROM 'f' WITH FORMAT csv",
                "expected `(` after WITH to open the option list, found `FORMAT` at line 1, column 22".into(),
            ),
            (
                "COPY x FROM 'f' (FORMAT csv",
                "expected `,` or `)` after option format, found end of statement at line 1, column 28".into(),
            ),
            (
                "COPY a.b.c.d TO 'f'",
                "name a.b.c.d has 4 parts; expected at most catalog.schema.name, at line 1, column 12".into(),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(error(text), (expected.clone(), "syntax"), "{text}");
        }
    }

    #[test]
    fn positions_count_lines_and_characters() {
        let text = "SELECT 'é';\n-- comment\nCREATE MATRIX m\n  (3, 4)\n  SPARCE";
        assert_eq!(
            error(text),
            (
                format!(
                    "expected BLOCK, SPARSE, DENSE, WITH, AS or end of statement after matrix m, found `SPARCE` at {}",
                    at(text, "SPARCE", 0)
                ),
                "syntax"
            )
        );
        assert_eq!(at(text, "SPARCE", 0), "line 5, column 3");
        let text = "CREATE ARRAY \"ü\" (v DOUBLE) DIMENSIONS (i 0:9 BLOCK 1) oops";
        assert_eq!(
            error(text).0,
            format!(
                "expected WITH or end of statement after the definition of array ü, found `oops` at {}",
                at(text, "oops", 0)
            )
        );
        assert_eq!(at(text, "oops", 0), "line 1, column 56");
    }

    #[test]
    fn unknown_keywords_and_trailing_garbage() {
        let cases: &[(&str, &str)] = &[
            (
                "SHOW ARRAYS now",
                "expected end of statement after SHOW ARRAYS, found `now` at line 1, column 13",
            ),
            (
                "DROP MATRIX a b",
                "expected `,` or end of statement after array name a, found `b` at line 1, column 15",
            ),
            (
                "DROP ARRAY a CASCADE",
                "expected `,` or end of statement after array name a, found `CASCADE` at line 1, column 14",
            ),
            (
                "CREATE MATRIX m (2, 2) BLOCK (1, 1) SPARSE WITH (a 1) x",
                "expected BLOCK, SPARSE, DENSE, WITH, AS or end of statement after matrix m, found `x` at line 1, column 55",
            ),
            (
                "CREATE MATRIX m (2, 2) (1, 1)",
                "expected BLOCK, SPARSE, DENSE, WITH, AS or end of statement after matrix m, found `(` at line 1, column 24",
            ),
            (
                "CREATE MATRIX m FOO",
                "expected `(rows, cols)`, BLOCK, SPARSE, DENSE, WITH or AS after matrix m, found `FOO` at line 1, column 17",
            ),
            (
                "CREATE MATRIX m (2, 2) SPARSE DENSE",
                "SPARSE or DENSE is given twice at line 1, column 31",
            ),
            (
                "CREATE MATRIX m (2, 2) BLOCK (1, 1) BLOCK (1, 1)",
                "BLOCK is given twice at line 1, column 37",
            ),
            (
                "CREATE ARRAY a (v DOUBLE) DIMENSIONS (i 0:9 BLOCK 1) WITH (k 1) WITH (j 2)",
                "expected end of statement after the definition of array a, found `WITH` at line 1, column 65",
            ),
            (
                "COPY x TO 'f' (FORMAT csv) HEADER",
                "expected end of statement after the COPY target, found `HEADER` at line 1, column 28",
            ),
            (
                "COPY x TO 'f' FORMAT csv",
                "expected WITH (options) or end of statement after the COPY target, found `FORMAT` at line 1, column 15",
            ),
            (
                "CREATE ARRAY IF NOT a (v DOUBLE)",
                "expected EXISTS after IF NOT, found `a` at line 1, column 21",
            ),
            (
                "CREATE ARRAY \"\" (v DOUBLE)",
                "zero-length quoted identifier at line 1, column 14",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(error(text), (expected.to_string(), "syntax"), "{text}");
        }
    }

    #[test]
    fn bad_values_are_plan_errors() {
        let cases: &[(&str, &str)] = &[
            (
                "CREATE ARRAY a (v DOUBLE) DIMENSIONS (i 10:5 BLOCK 1)",
                "dimension i has range 10:5, whose end is before its start, at line 1, column 41",
            ),
            (
                "CREATE ARRAY a (v DOUBLE) DIMENSIONS (i -1:-2 BLOCK 1)",
                "dimension i has range -1:-2, whose end is before its start, at line 1, column 41",
            ),
            (
                "CREATE ARRAY a (v DOUBLE) DIMENSIONS (i 0:9 BLOCK 0)",
                "the block length of dimension i must be at least 1, but is 0 at line 1, column 51",
            ),
            (
                "CREATE MATRIX m (2, 2) BLOCK (0, 2)",
                "the block size (r, c) of matrix m must be at least 1, but is 0 at line 1, column 31",
            ),
            (
                "CREATE MATRIX m (2, 0)",
                "the shape (rows, cols) of matrix m must be at least 1, but is 0 at line 1, column 21",
            ),
            (
                "CREATE ARRAY a (v INT) DIMENSIONS (i 0:9 BLOCK 1)",
                "unsupported type INT for attribute v at line 1, column 19: only DOUBLE is supported",
            ),
            (
                "CREATE ARRAY a (v double, s text) DIMENSIONS (i 0:9 BLOCK 1)",
                "unsupported type TEXT for attribute s at line 1, column 29: only DOUBLE is supported",
            ),
            (
                "CREATE ARRAY a (v DOUBLE) DIMENSIONS (i 0:9223372036854775808 BLOCK 1)",
                "integer 9223372036854775808 at line 1, column 43 does not fit in a 64-bit signed integer",
            ),
            (
                "CREATE ARRAY a (v DOUBLE) DIMENSIONS (i -9223372036854775809:0 BLOCK 1)",
                "integer -9223372036854775809 at line 1, column 42 does not fit in a 64-bit signed integer",
            ),
            (
                "CREATE MATRIX m (18446744073709551616, 1)",
                "integer 18446744073709551616 at line 1, column 18 does not fit in a 64-bit unsigned integer",
            ),
            (
                "COPY x FROM 'f' (FORMAT csv, format npy)",
                "option format is given twice at line 1, column 30",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(error(text), (expected.to_string(), "plan"), "{text}");
        }
    }

    #[test]
    fn unterminated_strings_are_reported_where_they_start() {
        assert_eq!(
            error("SHOW ARRAYS; COPY x FROM 'x.csv"),
            (
                "unterminated string literal at line 1, column 26".to_string(),
                "syntax"
            )
        );
        let (message, kind) = error("SELECT 1;\nSELECT $$ never closed");
        assert_eq!(kind, "syntax");
        assert!(
            message.starts_with("unterminated dollar-quoted"),
            "{message}"
        );
        assert!(message.contains("line 2"), "{message}");
    }

    #[test]
    fn an_error_in_any_statement_fails_the_script() {
        assert!(parse("SELECT 1; CREATE MATRIX m; SELECT 2").is_err());
    }

    // ---- properties ------------------------------------------------------------------

    const VALID: &[&str] = &[
        "CREATE ARRAY temps (t DOUBLE) DIMENSIONS (station 0:999 BLOCK 100, day -5:364 BLOCK 365) WITH (shards = 4)",
        "CREATE MATRIX IF NOT EXISTS x (1000, 100) BLOCK (10, 10) SPARSE WITH (k 'v')",
        "CREATE MATRIX g AS SELECT * FROM matmul(t(x), x) WHERE s = ';'",
        "DROP MATRIX IF EXISTS a, \"B\"",
        "COPY x (i, j, v) FROM 'x.csv' WITH (FORMAT csv, HEADER true, DELIMITER ',')",
        "COPY x TO STDOUT (FORMAT 'npy')",
        "COPY (SELECT 1) TO 'f.csv'",
        "SHOW ARRAYS",
        "VERIFY ARRAY m",
        "DESC s.\"T\"",
        "SELECT $$a;b$$, 'c;d' /* ; */ FROM t -- ;\n WHERE x = 1",
    ];

    /// Pieces random scripts are made of: keywords, punctuation, literals, quotes.
    const PIECES: &[&str] = &[
        "CREATE",
        "ARRAY",
        "MATRIX",
        "DROP",
        "COPY",
        "SHOW",
        "ARRAYS",
        "DESCRIBE",
        "DESC",
        "IF",
        "NOT",
        "EXISTS",
        "DIMENSIONS",
        "BLOCK",
        "WITH",
        "AS",
        "FROM",
        "TO",
        "STDIN",
        "STDOUT",
        "SPARSE",
        "DENSE",
        "DOUBLE",
        "PRECISION",
        "SELECT",
        "x",
        "\"Q\"",
        "\"",
        "'",
        "'s'",
        "$$",
        "$t$",
        "--",
        "/*",
        "*/",
        "(",
        ")",
        ",",
        ";",
        ":",
        "-",
        "+",
        "=",
        ".",
        "0",
        "7",
        "-3",
        "99999999999999999999",
        "1.5",
        "\n",
        "é",
    ];

    fn mutate(text: &str, edits: &[(u8, usize, char)]) -> String {
        let mut chars: Vec<char> = text.chars().collect();
        for &(kind, index, ch) in edits {
            let index = if chars.is_empty() {
                0
            } else {
                index % (chars.len() + 1)
            };
            match kind % 4 {
                0 if index < chars.len() => {
                    chars.remove(index);
                }
                1 => chars.insert(index, ch),
                2 => chars.truncate(index),
                _ if index < chars.len() => chars[index] = ch,
                _ => chars.push(ch),
            }
        }
        chars.into_iter().collect()
    }

    /// Every `Sql` text is a non-empty slice of the input.
    fn check_sql_texts(input: &str, statements: &[Statement]) {
        for statement in statements {
            if let Statement::Sql(text) = statement {
                assert!(!text.is_empty());
                assert!(input.contains(text.as_str()), "{text:?} not in {input:?}");
            }
        }
    }

    proptest! {
        #[test]
        fn random_text_never_panics(input in "\\PC{0,80}") {
            if let Ok(statements) = parse(&input) {
                check_sql_texts(&input, &statements);
            }
        }

        #[test]
        fn random_token_soup_never_panics(pieces in prop::collection::vec(prop::sample::select(PIECES), 0..40)) {
            let input = pieces.join(" ");
            if let Ok(statements) = parse(&input) {
                check_sql_texts(&input, &statements);
            }
        }

        #[test]
        fn mutated_statements_never_panic(
            base in prop::sample::select(VALID),
            edits in prop::collection::vec(
                (any::<u8>(), any::<usize>(), prop::sample::select(vec!['(', ')', ',', ';', ':', '-', '\'', '"', '$', ' ', '0', '9', 'x', '\n', '/', '*', 'é'])),
                1..6,
            ),
        ) {
            let input = mutate(base, &edits);
            if let Ok(statements) = parse(&input) {
                check_sql_texts(&input, &statements);
            }
        }

        #[test]
        fn a_script_parses_as_its_statements_parsed_one_by_one(
            picks in prop::collection::vec(prop::sample::select(VALID), 0..6),
        ) {
            let script = picks.join(";\n");
            let expected: Vec<Statement> =
                picks.iter().flat_map(|text| parse(text).unwrap()).collect();
            prop_assert_eq!(parse(&script).unwrap(), expected);
        }
    }
}
