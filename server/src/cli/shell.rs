//! The interactive shell: `tessera`, `tessera sql -d DIR` with no SQL, or either with
//! `--connect URL` for a running server. Described for users in `docs/shell.md`.
//!
//! ```text
//!  rustyline ── line ──┬─ `\` meta-command (one line) ─ \d \timing \rows \copy \q \?
//!                      └─ SQL buffer ─ split_statements (sqlparser's tokenizer) ─┐
//!                                                                              │
//!  Backend::Embedded(Database) | Backend::Remote(tokio_postgres::Client) <─────┘
//!      ├─ progress (counters | NOTICEs) ─ StatementBar after 1 s (progress.rs)
//!      └─ rows as text ─ StatementPrinter ─ table (capped: head + tail ring) | CSV (streamed)
//! ```
//!
//! A statement is complete at a `;` that sqlparser's PostgreSQL tokenizer reads as a
//! semicolon token, so a `;` in a string, a quoted name, a comment or a `$$` body never
//! ends one; an unterminated string or comment asks for more lines.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};
use futures::{SinkExt, StreamExt};
use rustyline::error::ReadlineError;
use tokio::runtime::Runtime;
use tokio_postgres::{AsyncMessage, CancelToken, NoTls, SimpleQueryMessage};

use super::output::{CappedTable, RowCap, TextRow, text_rows, write_csv_row};
use super::progress::{ProgressFeed, StatementBar};
use super::{OutputFormat, Target};
use crate::Database;

const PROMPT: &str = "tessera=> ";
const CONTINUATION_PROMPT: &str = "tessera-> ";

const HELP: &str = "\
Statements end with ';' and may span lines. Meta-commands take one line:
  \\d                  list arrays and tables
  \\d NAME             describe an array or a table
  \\timing [on|off]    print each statement's elapsed time
  \\rows [N|all]       show at most N rows of a result (first and last halves); default 40
  \\copy NAME [(cols)] FROM 'file' [options]    load a local file
  \\copy NAME TO 'file' [options]               write a local file
  \\copy (query) TO 'file' [options]
  \\?                  this help
  \\q                  quit (or Ctrl-D)
Ctrl-C clears the line being typed, or cancels the running statement.
";

/// Opens the shell on the terminal; returns the exit code (0 at `\q` or Ctrl-D).
pub(super) fn run(target: &Target, stdout: &mut dyn Write, stderr: &mut dyn Write) -> u8 {
    let (runtime, backend) = match connect(target) {
        Ok(connected) => connected,
        Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            return 1;
        }
    };
    let mut shell = Shell::new(backend, target, stdout, stderr);
    let _ = writeln!(
        shell.out,
        "tessera {} shell on {}; \\? for help, \\q to quit",
        env!("CARGO_PKG_VERSION"),
        shell.backend.describe()
    );
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(editor) => editor,
        Err(e) => {
            let _ = writeln!(shell.err, "error: cannot open the terminal: {e}");
            return 1;
        }
    };
    let history = history_file();
    if let Some(path) = &history {
        // No history yet is fine.
        let _ = editor.load_history(path);
    }
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            PROMPT
        } else {
            CONTINUATION_PROMPT
        };
        let line = match editor.readline(prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                let _ = writeln!(shell.err, "error: reading the terminal: {e}");
                break;
            }
        };
        if line.trim_start().starts_with('\\') {
            let _ = editor.add_history_entry(line.trim());
            match shell.meta(&runtime, line.trim()) {
                Flow::Continue => continue,
                Flow::Quit => break,
            }
        }
        if !buffer.is_empty() {
            buffer.push('\n');
        }
        buffer.push_str(&line);
        let split = split_statements(&buffer);
        if split.statements.is_empty() && !split.rest.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(buffer.split_whitespace().collect::<Vec<_>>().join(" "));
        for statement in &split.statements {
            shell.statement(&runtime, statement);
        }
        buffer = split.rest;
    }
    if let Some(path) = &history {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = editor.save_history(path) {
            let _ = writeln!(
                shell.err,
                "warning: cannot save the history to {}: {e}",
                path.display()
            );
        }
    }
    0
}

/// Runs a script's statements one by one through the shell's machinery, printing each
/// result in full: `tessera sql --connect URL "SQL"`. Stops at the first error (exit 1).
pub(super) fn run_script(
    target: &Target,
    script: &Result<String, String>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> u8 {
    if target.format == OutputFormat::Json {
        let _ = writeln!(
            stderr,
            "error: --format json is not available with --connect (table or csv are)"
        );
        return 2;
    }
    let text = match script {
        Ok(text) => text,
        Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            return 1;
        }
    };
    let (runtime, backend) = match connect(target) {
        Ok(connected) => connected,
        Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            return 1;
        }
    };
    let mut shell = Shell::new(backend, target, stdout, stderr);
    shell.cap = RowCap(None);
    let mut split = split_statements(text);
    if !split.rest.trim().is_empty() {
        split.statements.push(split.rest);
    }
    for statement in &split.statements {
        if !shell.statement(&runtime, statement) {
            return 1;
        }
    }
    0
}

/// Where the history is kept: `TESSERA_HISTORY` (empty: none), else
/// `$XDG_STATE_HOME/tessera/history`, else `~/.tessera_history`.
fn history_file() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(path) = std::env::var_os("TESSERA_HISTORY") {
        return (!path.is_empty()).then(|| PathBuf::from(path));
    }
    if let Some(state) = var("XDG_STATE_HOME") {
        return Some(Path::new(&state).join("tessera").join("history"));
    }
    var("HOME").map(|home| Path::new(&home).join(".tessera_history"))
}

fn connect(target: &Target) -> Result<(Runtime, Backend), String> {
    let runtime = super::runtime()?;
    let backend = match &target.connect {
        None => Backend::Embedded(super::open_database(target)?),
        Some(url) => runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(url, NoTls)
                .await
                .map_err(|e| format!("connecting to {}: {}", redact(url), pg_error(&e)))?;
            // The connection's messages: progress NOTICEs feed the bar.
            let notices: Arc<Mutex<Option<String>>> = Arc::default();
            let last = Arc::clone(&notices);
            let mut connection = connection;
            tokio::spawn(async move {
                let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                while let Some(message) = messages.next().await {
                    match message {
                        Ok(AsyncMessage::Notice(notice))
                            if notice.message().starts_with("progress:") =>
                        {
                            *last.lock().unwrap_or_else(|e| e.into_inner()) =
                                Some(notice.message().to_string());
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!("the server connection ended: {e}");
                            break;
                        }
                    }
                }
            });
            // A Tessera server sends progress NOTICEs once a statement has run as long
            // as the bar waits; another server refuses the setting, and gets no bar.
            let notice_after = format!(
                "SET tessera.progress_notice_after = '{}ms'",
                target.progress_after.as_millis().max(1)
            );
            let _ = client.batch_execute(&notice_after).await;
            Ok::<_, String>(Backend::Remote {
                cancel: client.cancel_token(),
                client: Box::new(client),
                url: redact(url),
                notices,
            })
        })?,
    };
    Ok((runtime, backend))
}

/// The URL without its password, to print.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user_info = &url[scheme + 3..at];
            match user_info.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// A server error with its message and SQLSTATE, as psql prints one.
fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// The database the shell works on.
enum Backend {
    Embedded(Database),
    Remote {
        // Boxed: a client is several times the size of an embedded `Database`.
        client: Box<tokio_postgres::Client>,
        cancel: CancelToken,
        url: String,
        /// The last progress NOTICE of the running statement.
        notices: Arc<Mutex<Option<String>>>,
    },
}

/// Receives a result as it streams: its columns once, then rows in chunks.
trait ResultSink {
    fn columns(&mut self, names: Vec<String>) -> io::Result<()>;
    fn rows(&mut self, rows: Vec<TextRow>) -> io::Result<()>;
}

impl Backend {
    fn describe(&self) -> String {
        match self {
            Backend::Embedded(db) => match db.data_dir() {
                Some(dir) => dir.display().to_string(),
                None => "an in-memory database".into(),
            },
            Backend::Remote { url, .. } => url.clone(),
        }
    }

    /// Runs one statement, handing its result to `sink` as it arrives.
    async fn query(&self, sql: &str, sink: &mut dyn ResultSink) -> Result<(), String> {
        match self {
            Backend::Embedded(db) => {
                let mut stream = db.sql_stream(sql).await.map_err(|e| e.to_string())?;
                let schema = stream.schema();
                if schema.fields().is_empty() {
                    return Ok(());
                }
                let names = schema.fields().iter().map(|f| f.name().clone()).collect();
                sink.columns(names).map_err(write_error)?;
                while let Some(batch) = stream.next().await {
                    let batch = batch.map_err(|e| e.to_string())?;
                    sink.rows(text_rows(&batch)?).map_err(write_error)?;
                }
                Ok(())
            }
            Backend::Remote { client, .. } => {
                let stream = client
                    .simple_query_raw(sql)
                    .await
                    .map_err(|e| pg_error(&e))?;
                futures::pin_mut!(stream);
                let mut chunk = Vec::new();
                while let Some(message) = stream.next().await {
                    match message.map_err(|e| pg_error(&e))? {
                        SimpleQueryMessage::RowDescription(columns) => {
                            let names = columns.iter().map(|c| c.name().to_string()).collect();
                            sink.columns(names).map_err(write_error)?;
                        }
                        SimpleQueryMessage::Row(row) => {
                            chunk.push(
                                (0..row.len())
                                    .map(|i| row.get(i).unwrap_or("").to_string())
                                    .collect(),
                            );
                            if chunk.len() >= 1024 {
                                sink.rows(std::mem::take(&mut chunk)).map_err(write_error)?;
                            }
                        }
                        _ => {}
                    }
                }
                if !chunk.is_empty() {
                    sink.rows(chunk).map_err(write_error)?;
                }
                Ok(())
            }
        }
    }

    /// `\copy`: the shell reads or writes the local file. The embedded database opens
    /// it itself; a server gets it through COPY FROM STDIN / TO STDOUT. Returns what
    /// to report.
    async fn copy(&self, copy: &CopyCommand) -> Result<String, String> {
        let file = std::path::absolute(&copy.file).map_err(|e| format!("{}: {e}", copy.file))?;
        let direction = match copy.direction {
            CopyDirection::From => "FROM",
            CopyDirection::To => "TO",
        };
        match self {
            Backend::Embedded(_) => {
                let sql = format!(
                    "COPY {} {direction} '{}' {}",
                    copy.target,
                    file.display().to_string().replace('\'', "''"),
                    copy.options
                );
                let mut rows = Collected::default();
                self.query(&sql, &mut rows).await?;
                let count = rows.rows.first().and_then(|r| r.first()).cloned();
                Ok(format!("COPY {}", count.unwrap_or_default()))
            }
            Backend::Remote { client, .. } => match copy.direction {
                CopyDirection::From => {
                    let sql = format!("COPY {} FROM STDIN {}", copy.target, copy.options);
                    let mut reader = std::fs::File::open(&file)
                        .map_err(|e| format!("{}: {e}", file.display()))?;
                    let sink = client
                        .copy_in::<_, bytes::Bytes>(sql.as_str())
                        .await
                        .map_err(|e| pg_error(&e))?;
                    futures::pin_mut!(sink);
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        let n = io::Read::read(&mut reader, &mut buf)
                            .map_err(|e| format!("{}: {e}", file.display()))?;
                        if n == 0 {
                            break;
                        }
                        sink.send(bytes::Bytes::copy_from_slice(&buf[..n]))
                            .await
                            .map_err(|e| pg_error(&e))?;
                    }
                    let rows = sink.finish().await.map_err(|e| pg_error(&e))?;
                    Ok(format!("COPY {rows}"))
                }
                CopyDirection::To => {
                    let sql = format!("COPY {} TO STDOUT {}", copy.target, copy.options);
                    let stream = client
                        .copy_out(sql.as_str())
                        .await
                        .map_err(|e| pg_error(&e))?;
                    futures::pin_mut!(stream);
                    let mut writer = io::BufWriter::new(
                        std::fs::File::create(&file)
                            .map_err(|e| format!("{}: {e}", file.display()))?,
                    );
                    let mut bytes = 0usize;
                    while let Some(data) = stream.next().await {
                        let data = data.map_err(|e| pg_error(&e))?;
                        bytes += data.len();
                        writer
                            .write_all(&data)
                            .map_err(|e| format!("{}: {e}", file.display()))?;
                    }
                    writer
                        .flush()
                        .map_err(|e| format!("{}: {e}", file.display()))?;
                    Ok(format!("COPY ({bytes} bytes to {})", file.display()))
                }
            },
        }
    }

    /// Where the progress bar reads the running statement's progress.
    fn progress_feed(&self) -> ProgressFeed {
        match self {
            Backend::Embedded(db) => ProgressFeed::Local(db.statement_progress()),
            Backend::Remote { notices, .. } => ProgressFeed::Notices(Arc::clone(notices)),
        }
    }

    fn cancel_token(&self) -> Option<CancelToken> {
        match self {
            Backend::Embedded(_) => None,
            Backend::Remote { cancel, .. } => Some(cancel.clone()),
        }
    }
}

fn write_error(e: io::Error) -> String {
    format!("writing the result: {e}")
}

/// A whole small result, for `\d` and `\copy`'s count.
#[derive(Debug, Default)]
struct Collected {
    columns: Vec<String>,
    rows: Vec<TextRow>,
}

impl ResultSink for Collected {
    fn columns(&mut self, names: Vec<String>) -> io::Result<()> {
        self.columns = names;
        Ok(())
    }

    fn rows(&mut self, rows: Vec<TextRow>) -> io::Result<()> {
        self.rows.extend(rows);
        Ok(())
    }
}

/// Prints one statement's result: CSV as rows arrive, a table once they have all
/// arrived (keeping only what the cap shows).
struct StatementPrinter<'a> {
    out: &'a mut dyn Write,
    /// The statement's progress bar, cleared before anything prints.
    bar: indicatif::ProgressBar,
    format: OutputFormat,
    cap: RowCap,
    table: Option<CappedTable>,
}

impl ResultSink for StatementPrinter<'_> {
    fn columns(&mut self, names: Vec<String>) -> io::Result<()> {
        match self.format {
            OutputFormat::Csv => {
                self.bar.finish_and_clear();
                write_csv_row(self.out, &names)
            }
            OutputFormat::Table | OutputFormat::Json => {
                self.table = Some(CappedTable::new(names, self.cap));
                Ok(())
            }
        }
    }

    fn rows(&mut self, rows: Vec<TextRow>) -> io::Result<()> {
        match (&mut self.table, self.format) {
            (Some(table), _) => rows.into_iter().for_each(|row| table.push(row)),
            (None, _) => {
                for row in &rows {
                    write_csv_row(self.out, row)?;
                }
                self.out.flush()?;
            }
        }
        Ok(())
    }
}

enum Flow {
    Continue,
    Quit,
}

struct Shell<'a> {
    backend: Backend,
    format: OutputFormat,
    /// How long a statement runs before its progress bar shows.
    progress_after: Duration,
    cap: RowCap,
    timing: bool,
    out: &'a mut dyn Write,
    err: &'a mut dyn Write,
}

impl<'a> Shell<'a> {
    fn new(
        backend: Backend,
        target: &Target,
        out: &'a mut dyn Write,
        err: &'a mut dyn Write,
    ) -> Self {
        Shell {
            backend,
            format: target.format,
            progress_after: target.progress_after,
            cap: RowCap::DEFAULT,
            timing: false,
            out,
            err,
        }
    }

    /// Runs one statement and prints its result, or its error; Ctrl-C cancels it.
    /// Returns whether it succeeded.
    fn statement(&mut self, runtime: &Runtime, sql: &str) -> bool {
        let started = Instant::now();
        let mut bar = StatementBar::start(self.backend.progress_feed(), self.progress_after);
        let mut printer = StatementPrinter {
            out: &mut *self.out,
            bar: bar.handle(),
            format: self.format,
            cap: self.cap,
            table: None,
        };
        let cancel = self.backend.cancel_token();
        let result = runtime.block_on(interruptible(
            bar.run(self.backend.query(sql, &mut printer)),
            cancel,
        ));
        bar.clear();
        let table = printer.table.take();
        let result = result.and_then(|()| match table {
            Some(table) => table.render(self.out).map_err(write_error),
            None => Ok(()),
        });
        self.report(started, result)
    }

    fn report(&mut self, started: Instant, result: Result<(), String>) -> bool {
        let ok = match result {
            Ok(()) => true,
            Err(e) => {
                let _ = writeln!(self.err, "error: {e}");
                false
            }
        };
        if self.timing {
            let _ = writeln!(
                self.out,
                "Time: {:.3} ms",
                started.elapsed().as_secs_f64() * 1e3
            );
        }
        let _ = self.out.flush();
        ok
    }

    fn meta(&mut self, runtime: &Runtime, line: &str) -> Flow {
        let command = match parse_meta(line) {
            Ok(command) => command,
            Err(e) => {
                let _ = writeln!(self.err, "error: {e}");
                return Flow::Continue;
            }
        };
        match command {
            MetaCommand::Quit => return Flow::Quit,
            MetaCommand::Help => {
                let _ = write!(self.out, "{HELP}");
            }
            MetaCommand::Timing(on) => {
                self.timing = on.unwrap_or(!self.timing);
                let state = if self.timing { "on" } else { "off" };
                let _ = writeln!(self.out, "Timing is {state}.");
            }
            MetaCommand::Rows(cap) => {
                if let Some(cap) = cap {
                    self.cap = cap;
                }
                let _ = match self.cap.0 {
                    Some(n) => writeln!(self.out, "Showing at most {n} rows of a result."),
                    None => writeln!(self.out, "Showing every row of a result."),
                };
            }
            MetaCommand::Describe(Some(name)) => {
                self.statement(runtime, &format!("DESCRIBE {name}"));
            }
            MetaCommand::Describe(None) => {
                let started = Instant::now();
                let result = runtime.block_on(self.list_objects());
                self.report(started, result);
            }
            MetaCommand::Copy(copy) => {
                let started = Instant::now();
                let cancel = self.backend.cancel_token();
                let result = runtime.block_on(interruptible(
                    async {
                        let message = self.backend.copy(&copy).await?;
                        writeln!(self.out, "{message}").map_err(write_error)
                    },
                    cancel,
                ));
                self.report(started, result);
            }
        }
        Flow::Continue
    }

    /// `\d`: the arrays (SHOW ARRAYS), then the tables that are not arrays.
    async fn list_objects(&mut self) -> Result<(), String> {
        let mut arrays = Collected::default();
        self.backend.query("SHOW ARRAYS", &mut arrays).await?;
        let mut tables = Collected::default();
        self.backend
            .query(
                "SELECT table_schema AS schema, table_name AS name, table_type AS type \
                 FROM information_schema.tables \
                 WHERE table_schema NOT IN ('information_schema', 'pg_catalog') \
                 ORDER BY 1, 2",
                &mut tables,
            )
            .await?;
        let array_names: Vec<&String> = arrays.rows.iter().filter_map(|r| r.first()).collect();
        let name_of = |row: &TextRow| row.get(1).cloned().unwrap_or_default();
        let print = |out: &mut dyn Write, title: &str, collected: Collected| {
            writeln!(out, "{title}")?;
            let mut table = CappedTable::new(collected.columns, RowCap(None));
            collected.rows.into_iter().for_each(|row| table.push(row));
            table.render(out)
        };
        let mut table_rows = Collected {
            columns: tables.columns,
            rows: Vec::new(),
        };
        table_rows.rows = tables
            .rows
            .into_iter()
            .filter(|row| !array_names.contains(&&name_of(row)))
            .collect();
        print(self.out, "Arrays", arrays).map_err(write_error)?;
        print(self.out, "Tables", table_rows).map_err(write_error)
    }
}

/// Runs `work` until it finishes or Ctrl-C arrives; then it is dropped (which stops an
/// embedded statement) and a server is asked to cancel too.
async fn interruptible(
    work: impl Future<Output = Result<(), String>>,
    cancel: Option<CancelToken>,
) -> Result<(), String> {
    tokio::select! {
        result = work => result,
        // A handler that cannot be installed disables this branch, not the statement.
        Ok(()) = tokio::signal::ctrl_c() => {
            if let Some(cancel) = cancel {
                let _ = cancel.cancel_query(NoTls).await;
            }
            Err("canceled by Ctrl-C".into())
        }
    }
}

/// A script cut at its semicolons: the complete statements, and what is left.
#[derive(Debug, PartialEq)]
pub(super) struct Split {
    /// Complete statements, each with its `;`, comment-only ones dropped.
    pub(super) statements: Vec<String>,
    /// Text after the last `;` that holds more than blanks and comments: an
    /// unfinished statement.
    pub(super) rest: String,
}

/// Cuts `text` at the semicolons sqlparser's PostgreSQL tokenizer finds. An
/// unterminated string, quoted name or comment leaves everything unfinished; any other
/// tokenizer error is the parser's to report, so text ending in `;` is sent as it is.
pub(super) fn split_statements(text: &str) -> Split {
    let tokens = match Tokenizer::new(&PostgreSqlDialect {}, text).tokenize_with_location() {
        Ok(tokens) => tokens,
        Err(e) if e.message.contains("Unterminated") || e.message.contains("EOF") => {
            return Split {
                statements: Vec::new(),
                rest: text.to_string(),
            };
        }
        Err(_) if text.trim_end().ends_with(';') => {
            return Split {
                statements: vec![text.trim().to_string()],
                rest: String::new(),
            };
        }
        Err(_) => {
            return Split {
                statements: Vec::new(),
                rest: text.to_string(),
            };
        }
    };
    let offsets = LineOffsets::new(text);
    let mut statements = Vec::new();
    let (mut start, mut significant) = (0, false);
    for token in &tokens {
        match &token.token {
            Token::SemiColon => {
                let end = offsets.byte(token.span.start) + 1;
                if significant {
                    statements.push(text[start..end].trim().to_string());
                }
                (start, significant) = (end, false);
            }
            Token::Whitespace(_) | Token::EOF => {}
            _ => significant = true,
        }
    }
    let rest = if significant {
        text[start..].trim_start().to_string()
    } else {
        String::new()
    };
    Split { statements, rest }
}

/// Maps the tokenizer's locations (1-based line and character column) to byte offsets.
struct LineOffsets<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> LineOffsets<'a> {
    fn new(text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineOffsets { text, line_starts }
    }

    fn byte(&self, location: Location) -> usize {
        let line = (location.line as usize).saturating_sub(1);
        let start = self
            .line_starts
            .get(line)
            .copied()
            .unwrap_or(self.text.len());
        let column = (location.column as usize).saturating_sub(1);
        self.text[start..]
            .char_indices()
            .nth(column)
            .map_or(self.text.len(), |(i, _)| start + i)
    }
}

/// A `\` command.
#[derive(Debug, PartialEq)]
pub(super) enum MetaCommand {
    Quit,
    Help,
    /// `\timing`: on, off, or `None` to toggle.
    Timing(Option<bool>),
    /// `\rows`: a new cap, or `None` to show the current one.
    Rows(Option<RowCap>),
    /// `\d` or `\d name`.
    Describe(Option<String>),
    Copy(CopyCommand),
}

/// `\copy target FROM|TO 'file' options`.
#[derive(Debug, PartialEq)]
pub(super) struct CopyCommand {
    /// `name`, `name (col, ...)` or `(query)`, as written.
    pub(super) target: String,
    pub(super) direction: CopyDirection,
    /// The local file.
    pub(super) file: String,
    /// The rest (`WITH (FORMAT csv, HEADER true)`, ...), passed on as written.
    pub(super) options: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CopyDirection {
    From,
    To,
}

/// Reads a one-line `\` command.
pub(super) fn parse_meta(line: &str) -> Result<MetaCommand, String> {
    let line = line.trim();
    let (name, args) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let args = args.trim();
    let no_args = |command: MetaCommand| {
        if args.is_empty() {
            Ok(command)
        } else {
            Err(format!("{name} takes no argument"))
        }
    };
    match name {
        "\\q" | "\\quit" => no_args(MetaCommand::Quit),
        "\\?" | "\\help" => no_args(MetaCommand::Help),
        "\\timing" => match args.to_ascii_lowercase().as_str() {
            "" => Ok(MetaCommand::Timing(None)),
            "on" => Ok(MetaCommand::Timing(Some(true))),
            "off" => Ok(MetaCommand::Timing(Some(false))),
            other => Err(format!("\\timing takes on or off, not '{other}'")),
        },
        "\\rows" => match args.to_ascii_lowercase().as_str() {
            "" => Ok(MetaCommand::Rows(None)),
            "all" => Ok(MetaCommand::Rows(Some(RowCap(None)))),
            n => n
                .parse()
                .map(|n| MetaCommand::Rows(Some(RowCap(Some(n)))))
                .map_err(|_| format!("\\rows takes a number of rows or all, not '{args}'")),
        },
        "\\d" => {
            let object = args.trim_end_matches(';').trim();
            Ok(MetaCommand::Describe(
                (!object.is_empty()).then(|| object.to_string()),
            ))
        }
        "\\copy" => parse_copy(args).map(MetaCommand::Copy),
        other => Err(format!("unknown command {other}; \\? lists them")),
    }
}

/// `target FROM|TO file options`: the first FROM or TO outside parentheses ends the
/// target; the file is a quoted string (`''` for a quote) or a word up to a blank.
fn parse_copy(args: &str) -> Result<CopyCommand, String> {
    const USAGE: &str =
        "\\copy takes NAME [(cols)] FROM 'file', NAME TO 'file' or (query) TO 'file'";
    let tokens: Vec<TokenWithSpan> = Tokenizer::new(&PostgreSqlDialect {}, args)
        .tokenize_with_location()
        .map_err(|e| format!("\\copy: {e}"))?;
    let offsets = LineOffsets::new(args);
    let mut depth = 0usize;
    let mut keyword = None;
    for token in &tokens {
        match &token.token {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::Word(w) if depth == 0 && w.quote_style.is_none() => {
                let direction = match w.keyword {
                    Keyword::FROM => CopyDirection::From,
                    Keyword::TO => CopyDirection::To,
                    _ => continue,
                };
                let at = offsets.byte(token.span.start);
                keyword = Some((direction, at, at + w.value.len()));
                break;
            }
            _ => {}
        }
    }
    let (direction, at, after) = keyword.ok_or(USAGE)?;
    let target = args[..at].trim();
    if target.is_empty() {
        return Err(USAGE.into());
    }
    if target.starts_with('(') && direction == CopyDirection::From {
        return Err("\\copy (query) can only go TO a file".into());
    }
    let rest = args[after..].trim_start();
    let (file, options) = match rest.strip_prefix('\'') {
        Some(quoted) => {
            let mut file = String::new();
            let mut chars = quoted.char_indices().peekable();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                if c == '\'' {
                    if chars.peek().is_some_and(|(_, next)| *next == '\'') {
                        chars.next();
                    } else {
                        end = Some(i + 1);
                        break;
                    }
                }
                file.push(c);
            }
            let end = end.ok_or("\\copy: the file name's quote is not closed")?;
            (file, &quoted[end..])
        }
        None => {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            (rest[..end].trim_end_matches(';').to_string(), &rest[end..])
        }
    };
    if file.is_empty() {
        return Err(USAGE.into());
    }
    Ok(CopyCommand {
        target: target.to_string(),
        direction,
        file,
        options: options.trim().trim_end_matches(';').trim_end().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_end_at_semicolons_outside_strings_and_comments() {
        let done = |text: &str| split_statements(text);
        // Typed line by line: incomplete until the `;`.
        assert_eq!(done("CREATE MATRIX a (2, 2)").statements.len(), 0);
        assert_eq!(
            done("CREATE MATRIX a (2, 2)").rest,
            "CREATE MATRIX a (2, 2)"
        );
        let s = done("CREATE MATRIX a\n  (2, 2)\n;");
        assert_eq!(s.statements, ["CREATE MATRIX a\n  (2, 2)\n;"]);
        assert_eq!(s.rest, "");
        // Semicolons in strings, quoted names, comments and $$ bodies do not count.
        for open in [
            "SELECT 'a;b",
            "SELECT \"x;",
            "SELECT 1 /* ; ",
            "SELECT $$ ; ",
            "SELECT 1 -- ;",
        ] {
            let s = done(open);
            assert!(s.statements.is_empty(), "{open}: {s:?}");
            assert_eq!(s.rest, open);
        }
        let s = done("SELECT 'a;b'; SELECT 2 /* ; */;");
        assert_eq!(s.statements, ["SELECT 'a;b';", "SELECT 2 /* ; */;"]);
        // Two on a line, the second unfinished; then a comment-only tail is nothing.
        let s = done("SELECT 1; SELECT");
        assert_eq!(
            (s.statements.as_slice(), s.rest.as_str()),
            (&["SELECT 1;".to_string()][..], "SELECT")
        );
        let s = done("SELECT 'é'; -- done\n");
        assert_eq!(
            (s.statements.as_slice(), s.rest.as_str()),
            (&["SELECT 'é';".to_string()][..], "")
        );
        // Empty statements are dropped; non-ASCII text before a `;` keeps byte offsets right.
        let s = done(";;SELECT 'ü' AS \"ö\";\n;");
        assert_eq!(s.statements, ["SELECT 'ü' AS \"ö\";"]);
        // A tokenizer error that is not an unfinished string is the parser's to report.
        let s = done("SELECT `x`;");
        assert_eq!(s.statements.len(), 1, "{s:?}");
        assert_eq!(
            done("  -- nothing\n"),
            Split {
                statements: Vec::new(),
                rest: String::new()
            }
        );
    }

    #[test]
    fn meta_commands_parse() {
        assert_eq!(parse_meta("\\q"), Ok(MetaCommand::Quit));
        assert_eq!(parse_meta(" \\? "), Ok(MetaCommand::Help));
        assert_eq!(parse_meta("\\timing"), Ok(MetaCommand::Timing(None)));
        assert_eq!(
            parse_meta("\\timing OFF"),
            Ok(MetaCommand::Timing(Some(false)))
        );
        assert_eq!(
            parse_meta("\\rows 10"),
            Ok(MetaCommand::Rows(Some(RowCap(Some(10)))))
        );
        assert_eq!(
            parse_meta("\\rows all"),
            Ok(MetaCommand::Rows(Some(RowCap(None))))
        );
        assert_eq!(parse_meta("\\rows"), Ok(MetaCommand::Rows(None)));
        assert_eq!(parse_meta("\\d"), Ok(MetaCommand::Describe(None)));
        assert_eq!(
            parse_meta("\\d m;"),
            Ok(MetaCommand::Describe(Some("m".into())))
        );
        assert!(parse_meta("\\rows many").is_err());
        assert!(parse_meta("\\q now").is_err());
        assert!(parse_meta("\\frob").is_err());
        assert!(parse_meta("\\timing maybe").is_err());
    }

    #[test]
    fn copy_commands_parse() {
        let copy = |line: &str| match parse_meta(line) {
            Ok(MetaCommand::Copy(c)) => c,
            other => panic!("{line}: {other:?}"),
        };
        assert_eq!(
            copy("\\copy m FROM 'in put.csv' WITH (FORMAT csv, HEADER true);"),
            CopyCommand {
                target: "m".into(),
                direction: CopyDirection::From,
                file: "in put.csv".into(),
                options: "WITH (FORMAT csv, HEADER true)".into(),
            }
        );
        let c = copy("\\copy (SELECT i FROM m WHERE j = 1) TO /tmp/o.csv");
        assert_eq!(
            (
                c.target.as_str(),
                c.direction,
                c.file.as_str(),
                c.options.as_str()
            ),
            (
                "(SELECT i FROM m WHERE j = 1)",
                CopyDirection::To,
                "/tmp/o.csv",
                ""
            )
        );
        let c = copy("\\copy t (a, \"To\") to 'it''s.csv'");
        assert_eq!(
            (c.target.as_str(), c.direction, c.file.as_str()),
            ("t (a, \"To\")", CopyDirection::To, "it's.csv")
        );
        assert!(parse_meta("\\copy m").is_err());
        assert!(parse_meta("\\copy FROM 'x'").is_err());
        assert!(parse_meta("\\copy (SELECT 1) FROM 'x'").is_err());
        assert!(parse_meta("\\copy m FROM 'x").is_err());
    }
}
