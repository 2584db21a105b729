//! Every statement is parsed once, here, where it enters: Tessera's own statements
//! (`CREATE ARRAY`, `CREATE MATRIX`, `COPY`, ...) into [`TesseraStatement`], every other
//! statement by DataFusion's parser ([`DFParser`]) into its syntax tree.
//!
//! [`parse`] tokenizes a script once with sqlparser's PostgreSQL tokenizer and drives one
//! [`DFParser`] over the tokens: at each statement, Tessera's grammar is tried first
//! (with sqlparser's own helpers for identifiers, names, lists and queries), and any
//! statement that is not Tessera's is parsed by DataFusion. So a semicolon inside a
//! string, a quoted identifier, a comment or a `$$` string never ends a statement, and
//! nothing is cut back out of the text and parsed again. The protocol servers classify
//! statements by the tree's variants, and the planner plans the tree.
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
use datafusion::sql::parser::{DFParser, DFParserBuilder, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{
    CopyTarget as SqlCopyTarget, Ident, ObjectName, ObjectNamePart, Query,
    Statement as SqlStatement,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser as SqlParser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};
use tessera_storage::AttributeType;

use crate::error::{ErrorKind, tessera_error};

/// How deep sqlparser may recurse while parsing one statement: DataFusion's default
/// (`datafusion.sql_parser.recursion_limit`). [`MAX_NESTING`] bounds what the planner
/// and executor see; this bounds the parser's own recursion.
pub const PARSER_RECURSION_LIMIT: usize = 50;

/// One statement of a script: either Tessera's own, or SQL for DataFusion.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// A statement Tessera plans itself.
    Tessera(TesseraStatement),
    /// Any other statement, as DataFusion's syntax tree.
    Sql(SqlText),
}

/// A statement for DataFusion: its syntax tree, and the source text it was parsed from.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlText {
    /// The syntax tree; this is what is planned.
    pub tree: DFStatement,
    /// The statement's source text, from its first token to its last (no surrounding
    /// whitespace, comments or `;`). Never parsed again: it keys the plan cache and is
    /// the definition a stored view or external table keeps.
    pub text: String,
}

impl SqlText {
    /// A statement whose tree was built or rewritten by the server (the psql catalog
    /// rewrites): its text is the tree's own rendering.
    pub fn from_tree(tree: DFStatement) -> Self {
        let text = tree.to_string();
        Self { tree, text }
    }

    /// The sqlparser statement inside, when DataFusion's parser left it as one (every
    /// statement but DataFusion's `CREATE EXTERNAL TABLE`, `COPY ... TO 'file'`,
    /// `EXPLAIN` and `RESET`).
    pub fn sql(&self) -> Option<&SqlStatement> {
        match &self.tree {
            DFStatement::Statement(statement) => Some(statement),
            _ => None,
        }
    }
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
        /// The query after `AS`, as a syntax tree.
        query: Option<Box<Query>>,
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

/// Parses a script of statements separated by `;`.
///
/// Semicolons inside strings, quoted identifiers, comments and dollar-quoted strings do
/// not split; empty statements (including comment-only ones) are dropped. Tessera's own
/// statements come back as [`Statement::Tessera`], every other statement as
/// [`Statement::Sql`] with DataFusion's syntax tree. A mistake in any statement fails
/// the whole script, with a message that names what was expected, the token found and
/// its line and column.
///
/// ```
/// use tessera_planner::ddl::{parse, Statement, TesseraStatement};
/// let statements = parse("SHOW ARRAYS; SELECT ';' AS s").unwrap();
/// assert_eq!(statements[0], Statement::Tessera(TesseraStatement::ShowArrays));
/// let Statement::Sql(select) = &statements[1] else { panic!() };
/// assert_eq!(select.text, "SELECT ';' AS s");
/// ```
pub fn parse(sql: &str) -> Result<Vec<Statement>> {
    parse_with(sql, ParseOptions::default())
}

/// How [`parse_with`] reads a script.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParseOptions {
    /// Numbers `?` placeholders `$1`, `$2`, ... in the order written (the DB-API's
    /// `qmark` style, which ADBC's Python driver declares), unless the script already
    /// numbers its placeholders. The tokenizer finds them, so a `?` inside a string,
    /// a quoted name or a comment is not one.
    pub number_question_marks: bool,
}

/// [`parse`], with options.
pub fn parse_with(sql: &str, options: ParseOptions) -> Result<Vec<Statement>> {
    let dialect = PostgreSqlDialect {};
    let mut tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| {
            syntax_error(ParserError::TokenizerError(format!(
                "{} at {}",
                lowercase_first(&e.message),
                position(e.location)
            )))
        })?;
    check_nesting(&tokens)?;
    if options.number_question_marks {
        number_question_marks(&mut tokens);
    }
    let source = SourceMap::new(sql);
    let spans: Vec<(bool, Location)> = tokens
        .iter()
        .map(|t| (matches!(t.token, Token::Whitespace(_)), t.span.end))
        .collect();
    let mut parser = DFParserBuilder::new(tokens)
        .with_dialect(&dialect)
        .with_recursion_limit(PARSER_RECURSION_LIMIT)
        .build()?;

    let mut statements = Vec::new();
    loop {
        while parser.parser.consume_token(&Token::SemiColon) {}
        let start = parser.parser.peek_token_ref().span.start;
        if parser.parser.peek_token_ref().token == Token::EOF {
            break;
        }
        let statement = match tessera_statement(&mut parser.parser)? {
            Some(statement) => Statement::Tessera(statement),
            None => {
                let tree = sql_statement(&mut parser)?;
                // The end of the last significant token consumed (the parser may have
                // stepped over whitespace after it).
                let end = spans[..parser.parser.index().min(spans.len())]
                    .iter()
                    .rev()
                    .find(|(blank, _)| !blank)
                    .map_or(start, |(_, end)| *end);
                let text = sql
                    .get(source.byte_offset(start)..source.byte_offset(end))
                    .unwrap_or_default()
                    .to_string();
                Statement::Sql(SqlText { tree, text })
            }
        };
        let next = parser.parser.peek_token_ref();
        if !matches!(next.token, Token::SemiColon | Token::EOF) {
            return Err(syntax_error(ParserError::ParserError(format!(
                "expected `;` or end of statement, found `{}` at {}",
                shorten(&next.token.to_string()),
                position(next.span.start)
            ))));
        }
        statements.push(statement);
    }
    Ok(statements)
}

/// Numbers the `?` placeholders among `tokens` `$1`, `$2`, ..., unless a numbered one
/// (`$1`) is already there.
fn number_question_marks(tokens: &mut [TokenWithSpan]) {
    let numbered = tokens
        .iter()
        .any(|t| matches!(&t.token, Token::Placeholder(p) if p.starts_with('$')));
    if numbered {
        return;
    }
    let mut count = 0;
    for token in tokens {
        // PostgreSQL's tokenizer reads a lone `?` as an operator, others as a placeholder.
        let question_mark = match &token.token {
            Token::Question => true,
            Token::Placeholder(p) => p == "?",
            _ => false,
        };
        if question_mark {
            count += 1;
            token.token = Token::Placeholder(format!("${count}"));
        }
    }
}

/// A statement that is not Tessera's, parsed by DataFusion. `COPY (query) TO STDOUT` is
/// PostgreSQL's form, which DataFusion's own `COPY` does not know: sqlparser parses it.
fn sql_statement(parser: &mut DFParser<'_>) -> Result<DFStatement> {
    // PostgreSQL's `ABORT [WORK | TRANSACTION]` is `ROLLBACK`; sqlparser has no `ABORT`.
    if is_word(parser.parser.peek_token_ref(), "ABORT") {
        parser.parser.advance_token();
        let _ = parser
            .parser
            .parse_one_of_keywords(&[Keyword::WORK, Keyword::TRANSACTION]);
        return Ok(DFStatement::Statement(Box::new(SqlStatement::Rollback {
            chain: false,
            savepoint: None,
        })));
    }
    let copy_query = matches!(
        parser.parser.peek_tokens_ref::<2>(),
        [first, second] if is_word(first, "COPY") && second.token == Token::LParen
    );
    if copy_query {
        let to_stdout = parser.parser.try_parse(|p| match p.parse_statement()? {
            statement @ SqlStatement::Copy {
                target: SqlCopyTarget::Stdout,
                ..
            } => Ok(statement),
            _ => Err(ParserError::ParserError(String::new())),
        });
        if let Ok(statement) = to_stdout {
            return Ok(DFStatement::Statement(Box::new(statement)));
        }
    }
    parser.parse_statement()
}

/// Tessera's statement at the parser's position, or `None` (nothing consumed) when the
/// statement is not one of Tessera's.
fn tessera_statement(p: &mut SqlParser<'_>) -> Result<Option<TesseraStatement>> {
    let [first, second] = p.peek_tokens_with_location::<2>();
    let (first, second) = (&first, &second);
    let starts = |a: &str, b: &[&str]| is_word(first, a) && b.iter().any(|w| is_word(second, w));
    let mut parser = Parser { p };
    if starts("CREATE", &["ARRAY"]) {
        parser.skip(2);
        return parser.create_array().map(Some);
    }
    if starts("CREATE", &["MATRIX"]) {
        parser.skip(2);
        return parser.create_matrix().map(Some);
    }
    if starts("DROP", &["ARRAY", "MATRIX"]) {
        parser.skip(2);
        return parser.drop_arrays().map(Some);
    }
    if starts("ALTER", &["ARRAY", "MATRIX"]) {
        parser.skip(2);
        return parser.alter_array_repartition().map(Some);
    }
    if starts("SHOW", &["ARRAYS", "MATRICES"]) {
        parser.skip(2);
        parser.expect_end("", "after SHOW ARRAYS")?;
        return Ok(Some(TesseraStatement::ShowArrays));
    }
    if is_word(first, "VERIFY") {
        parser.skip(1);
        let array = if parser.parse_word("ARRAY") || parser.parse_word("MATRIX") {
            Some(parser.identifier("an array name", "after VERIFY ARRAY")?)
        } else {
            None
        };
        let alternatives = if array.is_none() {
            "ARRAY, MATRIX or "
        } else {
            ""
        };
        parser.expect_end(alternatives, "after VERIFY")?;
        return Ok(Some(TesseraStatement::Verify { array }));
    }
    if is_word(first, "DESCRIBE") || is_word(first, "DESC") {
        // Only `DESCRIBE name`; any other form (`DESCRIBE SELECT ...`) is DataFusion's.
        let described = parser.p.try_parse(|p| {
            p.next_token();
            let name = p.parse_object_name(false)?;
            if at_end(p) {
                Ok(name)
            } else {
                Err(ParserError::ParserError(String::new()))
            }
        });
        return match described {
            Ok(name) => Ok(Some(TesseraStatement::Describe {
                name: table_reference(&name, p_location(&parser))?,
            })),
            Err(_) => Ok(None),
        };
    }
    if is_word(first, "COPY") && matches!(second.token, Token::Word(_)) {
        // `COPY t TO 'f' STORED AS ...` (DataFusion's) is told apart only after the
        // target: parse Tessera's form, and go back when it turns out to be DataFusion's.
        let mut datafusion_form = false;
        let parsed = parser.p.try_parse(|p| {
            p.next_token();
            match (Parser { p }).copy() {
                Ok(Some(statement)) => Ok(Ok(statement)),
                Ok(None) => {
                    datafusion_form = true;
                    Err(ParserError::ParserError(String::new()))
                }
                Err(e) => Ok(Err(e)),
            }
        });
        return match parsed {
            Ok(result) => result.map(Some),
            Err(_) if datafusion_form => Ok(None),
            Err(e) => Err(syntax_error(e)),
        };
    }
    Ok(None)
}

/// Where the parser is, for messages about what it just consumed.
fn p_location(parser: &Parser<'_, '_>) -> Location {
    parser.p.get_current_token().span.start
}

/// The deepest expression or plan a statement may build, as [`nesting_estimate`]
/// counts it. Deeper statements fail with [`ErrorKind::StatementTooComplex`] (54001)
/// before anything parses them: the parser, the planner and the executor all recurse
/// once per level, and a few thousand levels overflow a thread's stack.
pub const MAX_NESTING: usize = 200;

/// Refuses a script with a statement whose [`nesting_estimate`] exceeds [`MAX_NESTING`].
fn check_nesting(tokens: &[TokenWithSpan]) -> Result<()> {
    for statement in tokens.split(|t| t.token == Token::SemiColon) {
        let depth = nesting_estimate(statement.iter().map(|t| &t.token));
        if depth > MAX_NESTING {
            let at = statement
                .iter()
                .find(|t| !matches!(t.token, Token::Whitespace(_) | Token::EOF))
                .map(|t| position(t.span.start))
                .unwrap_or_default();
            return Err(tessera_error(
                ErrorKind::StatementTooComplex,
                format!(
                    "statement too complex: its expressions nest or chain about {depth} levels deep, more than the {MAX_NESTING} allowed (statement at {at})"
                ),
            ));
        }
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

/// Tessera's grammar, on sqlparser's parser: Tessera's statements and DataFusion's share
/// one token stream and one position.
struct Parser<'p, 'a> {
    p: &'p mut SqlParser<'a>,
}

impl Parser<'_, '_> {
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

        self.expect_word(
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

        let options = if self.parse_word("WITH") {
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
        let start_at = self.location();
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
                position(start_at)
            ));
        }
        self.expect_word("BLOCK", format!("after dimension range {start}:{end}"))?;
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
        if self.parse_word("DOUBLE") {
            self.parse_word("PRECISION");
            return Ok(AttributeType::Double);
        }
        if self.parse_word("FLOAT8") {
            return Ok(AttributeType::Double);
        }
        let next = self.p.peek_token_ref();
        match &next.token {
            Token::Word(word) => Err(tessera_error(
                ErrorKind::FeatureNotSupported,
                format!(
                    "unsupported type {} for attribute {attribute} at {}: only DOUBLE is supported",
                    word.value.to_ascii_uppercase(),
                    position(next.span.start)
                ),
            )),
            _ => Err(self.expected("a type (DOUBLE)", format!("after attribute {attribute}"))),
        }
    }

    /// After `CREATE MATRIX`.
    fn create_matrix(&mut self) -> Result<TesseraStatement> {
        let if_not_exists = self.if_not_exists()?;
        let name = self.identifier("a matrix name", "after CREATE MATRIX")?;
        // Where a missing shape should have been, for the message if no query follows.
        let missing_shape = self.expected(
            "`(rows, cols)`",
            format!("after matrix name {name} (only CREATE MATRIX ... AS <query> may leave the shape out)"),
        );
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
            let clause_at = self.location();
            if self.parse_word("BLOCK") {
                if block.is_some() {
                    return Err(duplicate("BLOCK", clause_at));
                }
                block = Some(self.pair(&format!("the block size (r, c) of matrix {name}"))?);
            } else if self.peek_word("SPARSE") || self.peek_word("DENSE") {
                if format.is_some() {
                    return Err(duplicate("SPARSE or DENSE", clause_at));
                }
                format = Some(if self.parse_word("SPARSE") {
                    MatrixFormat::Sparse
                } else {
                    self.skip(1);
                    MatrixFormat::Dense
                });
            } else if self.parse_word("WITH") {
                if options.is_some() {
                    return Err(duplicate("WITH", clause_at));
                }
                options = Some(self.option_list("after WITH")?);
            } else if self.parse_word("AS") {
                if !starts_query(self.p.peek_token_ref()) {
                    return Err(self.expected(
                        "a query (SELECT, VALUES, WITH or a parenthesised query)",
                        format!("after CREATE MATRIX {name} AS"),
                    ));
                }
                query = Some(self.p.parse_query().map_err(syntax_error)?);
                self.expect_end("", "after the query of CREATE MATRIX ... AS")?;
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
            return Err(missing_shape);
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
        let if_exists = if self.peek_word("IF") && self.peek_word_at(1, "EXISTS") {
            self.skip(2);
            true
        } else {
            false
        };
        if !self.peek_identifier() {
            return Err(self.expected("an array name", "after DROP ARRAY"));
        }
        let names = self
            .p
            .parse_comma_separated(|p| p.parse_identifier())
            .map_err(syntax_error)?;
        let names: Vec<String> = names.iter().map(normalize).collect();
        check_names(&names, self.location())?;
        let last = names.last().cloned().unwrap_or_default();
        self.expect_end("`,`", format!("after array name {last}"))?;
        Ok(TesseraStatement::DropArrays { names, if_exists })
    }

    /// After `ALTER ARRAY` / `ALTER MATRIX`: `name REPARTITION [WITH (shards = n)]`.
    fn alter_array_repartition(&mut self) -> Result<TesseraStatement> {
        let name = self.identifier("an array name", "after ALTER ARRAY")?;
        self.expect_word("REPARTITION", format!("after ALTER ARRAY {name}"))?;
        let mut shards = None;
        if self.parse_word("WITH") {
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
        if self.peek_is(&Token::LParen) {
            self.skip(1);
            if !self.peek_identifier() {
                return Err(self.expected("a column name", "in the column list of COPY"));
            }
            let listed = self
                .p
                .parse_comma_separated(|p| p.parse_identifier())
                .map_err(syntax_error)?;
            columns = listed.iter().map(normalize).collect();
            check_names(&columns, self.location())?;
            let last = columns.last().cloned().unwrap_or_default();
            self.expect(&Token::RParen, "`,` or `)`", format!("after column {last}"))?;
        }
        let direction = if self.parse_word("FROM") {
            CopyDirection::From(self.copy_target("FROM", "STDIN")?)
        } else if self.parse_word("TO") {
            let target = self.copy_target("TO", "STDOUT")?;
            if ["STORED", "PARTITIONED", "OPTIONS"]
                .iter()
                .any(|keyword| self.peek_word(keyword))
            {
                return Ok(None);
            }
            CopyDirection::To(target)
        } else {
            return Err(self.expected("FROM or TO", format!("after COPY {name}")));
        };
        let options =
            if self.peek_word("WITH") && is_legacy_copy_option(self.p.peek_nth_token_ref(1)) {
                self.skip(1);
                self.legacy_copy_options()?
            } else if self.parse_word("WITH") {
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
        while is_legacy_copy_option(self.p.peek_token_ref()) {
            let at = self.location();
            let Token::Word(word) = self.p.next_token().token else {
                break;
            };
            let word = word.value.to_ascii_lowercase();
            let (key, value) = match word.as_str() {
                "csv" | "binary" => ("format".to_string(), OptionValue::Ident(word)),
                "header" => (word, OptionValue::Bool(true)),
                _ => {
                    self.parse_word("AS");
                    let Some(text) = string_value(&self.p.peek_token_ref().token) else {
                        return Err(self.expected("a quoted string", format!("after {word}")));
                    };
                    self.skip(1);
                    (word, OptionValue::String(text))
                }
            };
            if options.iter().any(|(existing, _)| *existing == key) {
                return Err(plan_datafusion_err!(
                    "option {key} is given twice at {}",
                    position(at)
                ));
            }
            options.push((key, value));
        }
        Ok(options)
    }

    /// `'path'` or the stdio keyword after `FROM` / `TO`.
    fn copy_target(&mut self, direction: &str, stdio: &str) -> Result<CopyTarget> {
        if self.parse_word(stdio) {
            return Ok(CopyTarget::Stdio);
        }
        match string_value(&self.p.peek_token_ref().token) {
            Some(path) => {
                self.skip(1);
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
        if self.peek_word("IF") && self.peek_word_at(1, "NOT") {
            self.skip(2);
            self.expect_word("EXISTS", "after IF NOT")?;
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
            let key_at = self.location();
            let key = self
                .identifier("an option name", "in the option list")?
                .to_lowercase();
            let _ = self.p.consume_token(&Token::Eq);
            let value = self.option_value(&key)?;
            if options.iter().any(|(existing, _)| *existing == key) {
                return Err(plan_datafusion_err!(
                    "option {key} is given twice at {}",
                    position(key_at)
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
        let next = self.p.peek_token_ref().token.clone();
        if let Some(string) = string_value(&next) {
            self.skip(1);
            return Ok(OptionValue::String(string));
        }
        match next {
            Token::Comma | Token::RParen => Ok(OptionValue::Bool(true)),
            _ if self.parse_word("TRUE") => Ok(OptionValue::Bool(true)),
            _ if self.parse_word("FALSE") => Ok(OptionValue::Bool(false)),
            Token::Word(_) => Ok(OptionValue::Ident(self.identifier("", "")?)),
            Token::Number(number, _) => {
                self.skip(1);
                Ok(OptionValue::Number(number))
            }
            Token::Minus | Token::Plus => {
                let sign = if next == Token::Minus { "-" } else { "" };
                self.skip(1);
                match self.p.peek_token_ref().token.clone() {
                    Token::Number(number, _) => {
                        self.skip(1);
                        Ok(OptionValue::Number(format!("{sign}{number}")))
                    }
                    _ => Err(self.expected("a number", format!("after the sign of option {key}"))),
                }
            }
            _ => Err(self.expected("an option value", format!("after option {key}"))),
        }
    }

    /// An identifier, normalised: unquoted lowercased, quoted kept exactly.
    fn identifier(&mut self, what: &str, context: impl Display) -> Result<String> {
        if !self.peek_identifier() {
            return Err(self.expected(what, context));
        }
        let at = self.location();
        let ident = self.p.parse_identifier().map_err(syntax_error)?;
        let name = normalize(&ident);
        check_names(std::slice::from_ref(&name), at)?;
        Ok(name)
    }

    /// `name`, `schema.name` or `catalog.schema.name`.
    fn object_name(&mut self, what: &str, context: impl Display) -> Result<TableReference> {
        if !self.peek_identifier() {
            return Err(self.expected(what, context));
        }
        let at = self.location();
        let name = self.p.parse_object_name(false).map_err(syntax_error)?;
        table_reference(&name, at)
    }

    /// An optionally signed integer that fits in an `i64`.
    fn signed_integer(&mut self, context: String) -> Result<i64> {
        let negative = if self.p.consume_token(&Token::Minus) {
            true
        } else {
            let _ = self.p.consume_token(&Token::Plus);
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
        let next = self.p.peek_token_ref();
        if let Token::Number(number, _) = &next.token {
            let digits: String = number.chars().filter(|c| *c != '_').collect();
            if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) {
                let start = next.span.start;
                self.skip(1);
                return Ok((digits, start));
            }
        }
        Err(self.expected(what, context))
    }

    // ---- token plumbing ------------------------------------------------------------

    /// Consumes `n` tokens already looked at.
    fn skip(&mut self, n: usize) {
        for _ in 0..n {
            self.p.advance_token();
        }
    }

    /// Where the next token starts; where the last one ends at the end of the input.
    fn location(&self) -> Location {
        next_location(self.p)
    }

    fn at_end(&self) -> bool {
        at_end(self.p)
    }

    fn peek_is(&self, token: &Token) -> bool {
        self.p.peek_token_ref().token == *token
    }

    /// Whether an identifier (a word, quoted or not) comes next.
    fn peek_identifier(&self) -> bool {
        matches!(self.p.peek_token_ref().token, Token::Word(_))
    }

    fn expect(&mut self, token: &Token, shown: &str, context: impl Display) -> Result<()> {
        if self.p.consume_token(token) {
            Ok(())
        } else {
            Err(self.expected(shown, context))
        }
    }

    /// Whether the next token is the (unquoted, any case) word `word`.
    fn peek_word(&self, word: &str) -> bool {
        is_word(self.p.peek_token_ref(), word)
    }

    fn peek_word_at(&self, ahead: usize, word: &str) -> bool {
        is_word(self.p.peek_nth_token_ref(ahead), word)
    }

    /// Consumes the next token if it is the (unquoted, any case) word `word`. Tessera's
    /// words (`MATRIX`, `DIMENSIONS`, ...) are not all sqlparser keywords, so words are
    /// compared, not [`Keyword`](datafusion::sql::sqlparser::keywords::Keyword)s.
    fn parse_word(&mut self, word: &str) -> bool {
        let found = self.peek_word(word);
        if found {
            self.skip(1);
        }
        found
    }

    fn expect_word(&mut self, word: &str, context: impl Display) -> Result<()> {
        if self.parse_word(word) {
            Ok(())
        } else {
            Err(self.expected(word, context))
        }
    }

    /// After a list item: `,` (more follow) or `)` (the list ends).
    fn list_continues(&mut self, context: String) -> Result<bool> {
        if self.p.consume_token(&Token::Comma) {
            Ok(true)
        } else if self.p.consume_token(&Token::RParen) {
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
        let next = self.p.peek_token_ref();
        let found = match &next.token {
            Token::EOF | Token::SemiColon => "end of statement".to_string(),
            token => format!("`{}`", shorten(&token.to_string())),
        };
        syntax_error(ParserError::ParserError(format!(
            "expected {what}{separator}{context}, found {found} at {}",
            position(next_location(self.p))
        )))
    }
}

/// Where the next token starts; at the end of the input (whose token has no place),
/// where the last token ends.
fn next_location(p: &SqlParser<'_>) -> Location {
    let next = p.peek_token_ref();
    if next.token == Token::EOF {
        p.get_current_token().span.end
    } else {
        next.span.start
    }
}

/// Whether `token` can begin a query body (what `CREATE MATRIX ... AS` takes).
fn starts_query(token: &TokenWithSpan) -> bool {
    token.token == Token::LParen
        || ["SELECT", "VALUES", "WITH", "TABLE"]
            .iter()
            .any(|word| is_word(token, word))
}

/// Whether the statement ends at the parser's position.
fn at_end(p: &SqlParser<'_>) -> bool {
    matches!(p.peek_token_ref().token, Token::SemiColon | Token::EOF)
}

/// Whether `token` is the (unquoted, any case) word `word`.
fn is_word(token: &TokenWithSpan, word: &str) -> bool {
    matches!(&token.token, Token::Word(w)
        if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
}

/// SQL identifier rules, as DataFusion applies them: unquoted lowercased, quoted kept.
fn normalize(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

/// Refuses the zero-length quoted identifier `""` among `names`.
fn check_names(names: &[String], at: Location) -> Result<()> {
    if names.iter().any(String::is_empty) {
        return Err(syntax_error(ParserError::ParserError(format!(
            "zero-length quoted identifier at {}",
            position(at)
        ))));
    }
    Ok(())
}

/// `name`, `schema.name` or `catalog.schema.name` as a table reference, normalised.
fn table_reference(name: &ObjectName, at: Location) -> Result<TableReference> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => Ok(normalize(ident)),
            other => Err(syntax_error(ParserError::ParserError(format!(
                "{other} is not a name, at {}",
                position(at)
            )))),
        })
        .collect::<Result<_>>()?;
    check_names(&parts, at)?;
    match <[String; 3]>::try_from(parts) {
        Ok([catalog, schema, table]) => Ok(TableReference::full(catalog, schema, table)),
        Err(parts) => match <[String; 2]>::try_from(parts) {
            Ok([schema, table]) => Ok(TableReference::partial(schema, table)),
            Err(mut parts) if parts.len() == 1 => {
                Ok(TableReference::bare(parts.pop().unwrap_or_default()))
            }
            Err(parts) => {
                let last = name
                    .0
                    .last()
                    .and_then(|part| part.as_ident())
                    .map_or(at, |ident| ident.span.start);
                Err(syntax_error(ParserError::ParserError(format!(
                    "name {} has {} parts; expected at most catalog.schema.name, at {}",
                    parts.join("."),
                    parts.len(),
                    position(last)
                ))))
            }
        },
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

fn duplicate(clause: &str, at: Location) -> DataFusionError {
    syntax_error(ParserError::ParserError(format!(
        "{clause} is given twice at {}",
        position(at)
    )))
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
fn is_legacy_copy_option(token: &TokenWithSpan) -> bool {
    [
        "CSV",
        "BINARY",
        "HEADER",
        "DELIMITER",
        "NULL",
        "QUOTE",
        "ESCAPE",
    ]
    .iter()
    .any(|word| matches!(&token.token, Token::Word(w) if w.value.eq_ignore_ascii_case(word)))
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

    /// `text` as one DataFusion statement, parsed by DataFusion's own parser.
    fn sql(text: &str) -> Statement {
        let mut trees = DFParser::parse_sql_with_dialect(text, &PostgreSqlDialect {}).unwrap();
        assert_eq!(trees.len(), 1, "{text}");
        Statement::Sql(SqlText {
            tree: trees.pop_front().unwrap(),
            text: text.to_string(),
        })
    }

    /// `text` as a query, parsed by sqlparser's own parser.
    fn parsed_query(text: &str) -> Box<Query> {
        SqlParser::new(&PostgreSqlDialect {})
            .try_with_sql(text)
            .unwrap()
            .parse_query()
            .unwrap()
    }

    /// The error message, and whether it is a syntax error (`SQL`) or a plan error.
    fn error(sql: &str) -> (String, &'static str) {
        match parse(sql) {
            Err(DataFusionError::SQL(e, _)) => match *e {
                ParserError::ParserError(m) | ParserError::TokenizerError(m) => (m, "syntax"),
                other => panic!("unexpected parser error {other:?}"),
            },
            Err(DataFusionError::Plan(m)) => (m, "plan"),
            Err(e) if TesseraError::find(&e).is_some() => (
                TesseraError::find(&e).unwrap().message().to_string(),
                "plan",
            ),
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

    /// The tree of the one statement in `sql` parsed with `?` placeholders numbered, as
    /// sqlparser prints it.
    fn numbered(sql: &str) -> String {
        let options = ParseOptions {
            number_question_marks: true,
        };
        match parse_with(sql, options).unwrap().as_slice() {
            [Statement::Sql(statement)] => statement.tree.to_string(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn question_marks_become_numbered_placeholders() {
        assert_eq!(
            numbered("INSERT INTO t VALUES (?, ?)"),
            "INSERT INTO t VALUES ($1, $2)"
        );
        // Inside strings, quoted names and comments a `?` is not a placeholder.
        assert_eq!(
            numbered("SELECT '?', \"a?\" -- ?\n FROM t WHERE a = ? /* ? */"),
            "SELECT '?', \"a?\" FROM t WHERE a = $1"
        );
        assert_eq!(numbered("SELECT 'it''s ?', ?"), "SELECT 'it''s ?', $1");
        // Already numbered: left alone.
        assert_eq!(numbered("SELECT $1, '?'"), "SELECT $1, '?'");
        // Without the option, `?` is PostgreSQL's operator, not a placeholder.
        assert_eq!(
            error("SELECT ?").0,
            "Expected: an expression, found: ? at Line: 1, Column: 8"
        );
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
    fn create_matrix_as_holds_the_query_tree() {
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
                    query: Some(parsed_query(query)),
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
                query: Some(parsed_query("select  'a;b' , $$;$$")),
            }
        );
    }

    #[test]
    fn statement_text_is_exact_after_multibyte_characters() {
        let script =
            "CREATE MATRIX \"größe\" AS SELECT 'ü€' AS \"Ω\";\n  SELECT 'ü€' AS \"Ω\" -- ü\n";
        let statements = parse(script).unwrap();
        let Statement::Tessera(TesseraStatement::CreateMatrix { name, query, .. }) = &statements[0]
        else {
            panic!("{statements:?}")
        };
        assert_eq!(name, "größe");
        assert_eq!(
            query.as_ref().map(|q| q.to_string()).as_deref(),
            Some("SELECT 'ü€' AS \"Ω\"")
        );
        assert_eq!(statements[1], sql("SELECT 'ü€' AS \"Ω\""));
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
        for text in ["SHOW TABLES", "SHOW ALL", "DESCRIBE SELECT 1"] {
            assert_eq!(parse(text).unwrap(), vec![sql(text)], "{text}");
        }
        // Not `DESCRIBE name`, and not DataFusion's either: refused where it goes wrong.
        assert_eq!(
            error("DESC t extra").0,
            "expected `;` or end of statement, found `extra` at line 1, column 8"
        );
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
                "expected a query (SELECT, VALUES, WITH or a parenthesised query) after CREATE MATRIX m AS, found end of statement at line 1, column 26".into(),
            ),
            (
                "CREATE MATRIX m AS DROP TABLE t",
                "expected a query (SELECT, VALUES, WITH or a parenthesised query) after CREATE MATRIX m AS, found `DROP` at line 1, column 20".into(),
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
            if let Statement::Sql(sql) = statement {
                let text = &sql.text;
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
