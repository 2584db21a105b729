//! The `tessera` command line, as a library function so it can be tested in-process;
//! `src/main.rs` only calls [`main`], which installs logging and calls [`run`]. Flags
//! are parsed with clap.
//!
//! ```text
//! tessera [-d DIR | --connect URL]                       the interactive shell (docs/shell.md)
//! tessera sql [-d DIR] [--format table|csv|json] [--memory-limit BYTES] "SQL"
//! tessera sql [-d DIR] [--format ...] -f script.sql      (-f - reads stdin)
//! tessera sql [-d DIR | --connect URL]                   no SQL: the interactive shell
//! tessera serve [--config FILE] [--data-dir DIR] [--pg-listen ADDR] [--flight-listen ADDR] ...
//! tessera serve --workers ADDR,ADDR | --local-workers N  coordinate workers (docs/distributed.md)
//! tessera worker --listen ADDR --data-dir DIR            a worker on a shared data directory
//! ```
//!
//! `tessera serve` layers its settings: the file (`--config` or `TESSERA_CONFIG`), then
//! the `TESSERA_*` environment variables ([`crate::config::ENV_VARS`]), then the flags.
//! `-d` and `--memory-limit` of the shell and `tessera sql` read `TESSERA_DATA_DIR` and
//! `TESSERA_MEMORY_LIMIT` too.

mod output;
mod progress;
mod shell;
mod worker;

use std::io::{Read, Write};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use futures::StreamExt;

use crate::{Database, DatabaseOptions, Server, ServerConfig};

const AFTER_HELP: &str = "\
With no command, `tessera` opens the interactive shell on the data directory (or, with
--connect, on a running server); see docs/shell.md. `\\?` in the shell lists its commands.

`tessera serve` takes its settings from a TOML file (--config or TESSERA_CONFIG), then
TESSERA_* environment variables, then flags; flags win (docs/server.md lists them all).
SIGINT or SIGTERM stops accepting, lets running statements finish and exits 0.

Logging goes to standard error; set TESSERA_LOG (e.g. TESSERA_LOG=debug) to see more.

EXAMPLES:
    tessera -d ./db
    tessera sql -d ./db \"CREATE MATRIX m (2, 2); INSERT INTO m VALUES (0, 1, 5.0); SELECT * FROM m\"
    tessera --connect postgresql://tessera@127.0.0.1:5433/tessera";

/// The `tessera` process: logging to stderr, then [`run`] on the process's arguments
/// and standard streams.
pub fn main() -> ExitCode {
    install_logging();
    let args: Vec<String> = std::env::args().skip(1).collect();
    // None of the streams is locked for the whole run: the shell's line editor locks
    // stdin and stdout itself when they are not a terminal it can drive (and would wait
    // on our lock forever), and `tessera serve`'s worker threads log and report panics
    // to stderr.
    let code = run(
        &args,
        &mut std::io::stdin(),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    );
    ExitCode::from(code)
}

/// Logs to stderr at the level `TESSERA_LOG` names (warnings by default). Only the
/// process installs a subscriber; the libraries just emit events.
fn install_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TESSERA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// `tessera`: a SQL database for matrices and arrays.
#[derive(Debug, Parser)]
#[command(
    name = "tessera",
    version,
    about = "tessera: a SQL database for matrices and arrays",
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run statements and print the last result; with no SQL, open the shell.
    Sql(SqlArgs),
    /// Serve the data directory over PostgreSQL and Arrow Flight SQL.
    Serve(ServeArgs),
    /// Run the stages of block dataflows a coordinator sends (docs/distributed.md).
    Worker(worker::WorkerArgs),
}

/// Which database the shell and `tessera sql` work on.
#[derive(Debug, Clone, Args)]
struct Target {
    /// Data directory (created if missing).
    #[arg(
        short = 'd',
        long,
        value_name = "DIR",
        env = "TESSERA_DATA_DIR",
        default_value = "./tessera-data"
    )]
    data_dir: String,
    /// Work on a running server instead, e.g. postgresql://user@127.0.0.1:5433/tessera
    /// (the shell only).
    #[arg(long, value_name = "URL")]
    connect: Option<String>,
    /// How results are printed.
    #[arg(long, value_enum, ignore_case = true, default_value_t = OutputFormat::Table)]
    format: OutputFormat,
    /// Memory budget for queries, e.g. 2G, 512M (default 70% of RAM).
    #[arg(long, value_name = "BYTES", env = "TESSERA_MEMORY_LIMIT", value_parser = parse_bytes)]
    memory_limit: Option<usize>,
    /// How long a statement runs before the shell draws its progress bar, e.g. 1s,
    /// 200ms (with --connect, also how often the server sends progress NOTICEs).
    #[arg(
        long,
        value_name = "DURATION",
        env = "TESSERA_PROGRESS_AFTER",
        default_value = "1s",
        value_parser = crate::config::parse_duration
    )]
    progress_after: std::time::Duration,
}

#[derive(Debug, Clone, Args)]
struct SqlArgs {
    #[command(flatten)]
    target: Target,
    /// Read the statements from FILE ('-' for standard input).
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        conflicts_with = "sql"
    )]
    file: Option<String>,
    /// Statements, separated by ';'; the last one's result is printed.
    #[arg(value_name = "SQL")]
    sql: Vec<String>,
}

/// The flags of `tessera serve`; each names the key of the settings file it sets.
#[derive(Debug, Clone, Args)]
struct ServeArgs {
    /// TOML settings (see docs/server.md; also TESSERA_CONFIG).
    #[arg(short = 'c', long, value_name = "FILE")]
    config: Option<String>,
    /// Data directory (default ./tessera-data; TESSERA_DATA_DIR).
    #[arg(short = 'd', long, value_name = "DIR")]
    data_dir: Option<String>,
    /// PostgreSQL protocol address (default 127.0.0.1:5433; TESSERA_PG_LISTEN).
    #[arg(long, value_name = "ADDR")]
    pg_listen: Option<String>,
    /// Arrow Flight SQL address (default 127.0.0.1:50051, off for none; TESSERA_FLIGHT_LISTEN).
    #[arg(long, value_name = "ADDR")]
    flight_listen: Option<String>,
    /// Memory budget for queries (TESSERA_MEMORY_LIMIT).
    #[arg(long, value_name = "BYTES")]
    memory_limit: Option<String>,
    /// Connections at once (default 100; TESSERA_MAX_CONNECTIONS).
    #[arg(long, value_name = "N")]
    max_connections: Option<String>,
    /// Default statement timeout of every session, e.g. 30s (TESSERA_STATEMENT_TIMEOUT).
    #[arg(long, value_name = "DURATION")]
    statement_timeout: Option<String>,
    /// PEM certificate chain for TLS (TESSERA_TLS_CERT).
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<String>,
    /// PEM private key for TLS (TESSERA_TLS_KEY).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<String>,
    /// Workers to run block dataflows on, e.g. 10.0.0.2:7001,10.0.0.3:7001
    /// (TESSERA_WORKERS); they must read the same data directory.
    #[arg(long, value_name = "ADDR,...")]
    workers: Option<String>,
    /// Start N workers on loopback for a one-command trial (TESSERA_LOCAL_WORKERS).
    #[arg(long, value_name = "N")]
    local_workers: Option<String>,
}

impl ServeArgs {
    /// The flags given, as `(settings key, value)`.
    fn settings(&self) -> Vec<(&'static str, &str)> {
        [
            ("data_dir", &self.data_dir),
            ("pg_listen", &self.pg_listen),
            ("flight_listen", &self.flight_listen),
            ("memory_limit", &self.memory_limit),
            ("max_connections", &self.max_connections),
            ("statement_timeout", &self.statement_timeout),
            ("tls.cert", &self.tls_cert),
            ("tls.key", &self.tls_key),
            ("workers", &self.workers),
            ("local_workers", &self.local_workers),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.as_deref().map(|v| (key, v)))
        .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    Table,
    Csv,
    Json,
}

/// Parses a command line. The shell's options given before a command (`tessera -d DIR
/// sql ...`, `tessera -d DIR serve`) apply to it where the command does not set them
/// itself, instead of being dropped for the command's defaults.
fn parse_command_line(
    args: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>,
) -> Result<Cli, clap::Error> {
    use clap::parser::ValueSource;
    use clap::{ArgMatches, CommandFactory, FromArgMatches};
    let matches = Cli::command().try_get_matches_from(args)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    let given = |m: &ArgMatches, id: &str| m.value_source(id) == Some(ValueSource::CommandLine);
    let top = &cli.target;
    let inherits = |sub: &ArgMatches, id: &str| given(&matches, id) && !given(sub, id);
    match (&mut cli.command, matches.subcommand()) {
        (Some(Command::Sql(sql)), Some((_, sub))) => {
            let own = &mut sql.target;
            if inherits(sub, "data_dir") {
                own.data_dir.clone_from(&top.data_dir);
            }
            if inherits(sub, "connect") {
                own.connect.clone_from(&top.connect);
            }
            if inherits(sub, "format") {
                own.format = top.format;
            }
            if inherits(sub, "memory_limit") {
                own.memory_limit = top.memory_limit;
            }
            if inherits(sub, "progress_after") {
                own.progress_after = top.progress_after;
            }
        }
        (Some(Command::Serve(serve)), Some((_, sub))) => {
            if inherits(sub, "data_dir") {
                serve.data_dir = Some(top.data_dir.clone());
            }
            if inherits(sub, "memory_limit") && serve.memory_limit.is_none() {
                serve.memory_limit = top.memory_limit.map(|bytes| bytes.to_string());
            }
        }
        (Some(Command::Worker(worker)), Some((_, sub))) if inherits(sub, "data_dir") => {
            worker.data_dir.clone_from(&top.data_dir);
        }
        _ => {}
    }
    Ok(cli)
}

/// Runs the command line `args` (without the program name), reading a script from
/// `stdin` for `-f -`, printing results to `stdout` and `error: <message>` to `stderr`.
/// Returns the process exit code: 0 on success, 1 when a statement fails, 2 for a
/// usage mistake. With no SQL to run it opens the interactive shell on the terminal.
pub fn run(
    args: &[String],
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> u8 {
    let cli = match parse_command_line(
        std::iter::once("tessera".to_string()).chain(args.iter().cloned()),
    ) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let text = e.render().to_string();
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = write!(stdout, "{text}");
                    0
                }
                _ => {
                    let _ = write!(stderr, "{text}");
                    2
                }
            };
        }
    };
    match cli.command {
        None => shell::run(&cli.target, stdout, stderr),
        Some(Command::Sql(sql)) if sql.file.is_none() && sql.sql.is_empty() => {
            shell::run(&sql.target, stdout, stderr)
        }
        Some(Command::Sql(sql)) if sql.target.connect.is_some() => {
            shell::run_script(&sql.target, &script_text(&sql, stdin), stdout, stderr)
        }
        Some(Command::Sql(sql)) => run_sql(sql, stdin, stdout, stderr),
        Some(Command::Serve(serve)) => match serve_config(&serve, |var| std::env::var(var).ok()) {
            Ok(config) => run_serve(config, stderr),
            Err(message) => {
                let _ = writeln!(stderr, "error: {message}\n\nrun `tessera --help` for usage");
                2
            }
        },
        Some(Command::Worker(args)) => worker::run(args, stdout, stderr),
    }
}

/// The statements of `tessera sql`: its arguments, or the file `-f` names.
fn script_text(command: &SqlArgs, stdin: &mut dyn Read) -> Result<String, String> {
    match &command.file {
        Some(path) if path == "-" => {
            let mut text = String::new();
            stdin
                .read_to_string(&mut text)
                .map_err(|e| format!("reading standard input: {e}"))?;
            Ok(text)
        }
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}")),
        None => Ok(command.sql.join(" ")),
    }
}

/// `1024`, `64K`, `512M`, `2G` (powers of 1024; a trailing `B` or `iB` is allowed).
fn parse_bytes(text: &str) -> Result<usize, String> {
    crate::config::parse_bytes(text)
        .map_err(|_| format!("cannot read '{text}' as a memory size (e.g. 512M, 2G)"))
}

/// The settings of `tessera serve`: the file (`--config` or `TESSERA_CONFIG`), then the
/// environment (`env`), then the flags.
fn serve_config(
    args: &ServeArgs,
    env: impl Fn(&str) -> Option<String>,
) -> Result<ServerConfig, String> {
    let file = args
        .config
        .clone()
        .or_else(|| env("TESSERA_CONFIG").filter(|f| !f.is_empty()));
    let mut config = match file {
        Some(path) => ServerConfig::from_file(std::path::Path::new(&path))?,
        None => ServerConfig::default(),
    };
    config.apply_env(env)?;
    for (key, value) in args.settings() {
        config
            .set(key, value)
            .map_err(|e| format!("--{}: {e}", key.replace(['_', '.'], "-")))?;
    }
    config.validate()?;
    if config.flight_listen.is_none() {
        config.flight_listen = Some(crate::config::DEFAULT_FLIGHT_LISTEN.to_string());
    }
    Ok(config)
}

fn run_serve(mut config: ServerConfig, stderr: &mut dyn Write) -> u8 {
    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            return 1;
        }
    };
    // Local workers live as long as this function (they exit when it returns, and
    // when this process ends).
    let _local_workers = if config.local_workers > 0 {
        // The workers read the data directory, which the server creates only later.
        if let Err(e) = std::fs::create_dir_all(&config.data_dir) {
            let _ = writeln!(
                stderr,
                "error: cannot create the data directory {}: {e}",
                config.data_dir.display()
            );
            return 1;
        }
        let secret = config
            .cluster_secret
            .get_or_insert_with(worker::fresh_secret)
            .clone();
        match worker::LocalWorkers::start(
            config.local_workers,
            &config.data_dir.display().to_string(),
            &secret,
        ) {
            Ok(w) => {
                config.workers.extend(w.urls.iter().cloned());
                Some(w)
            }
            Err(e) => {
                let _ = writeln!(stderr, "error: {e}");
                return 1;
            }
        }
    } else {
        None
    };
    let data_dir = config.data_dir.display().to_string();
    let config_workers = config.workers.clone();
    let flight_scheme = if config.tls.is_some() {
        "grpc+tls"
    } else {
        "grpc"
    };
    let server = match runtime.block_on(Server::builder().config(config).build()) {
        Ok(server) => server,
        Err(e) => {
            let _ = writeln!(stderr, "error: {}", crate::errors::client_message(&e));
            return 1;
        }
    };
    let _ = writeln!(
        stderr,
        "tessera {} serving {data_dir} on postgresql://{} (psql -h {} -p {})",
        env!("CARGO_PKG_VERSION"),
        server.local_addr(),
        server.local_addr().ip(),
        server.local_addr().port()
    );
    if let Some(addr) = server.flight_addr() {
        let _ = writeln!(stderr, "Arrow Flight SQL on {flight_scheme}://{addr}");
    }
    if !config_workers.is_empty() {
        let _ = writeln!(
            stderr,
            "block dataflows over stored matrices run on workers {}",
            config_workers.join(", ")
        );
    }
    runtime.block_on(wait_for_stop_signal());
    let _ = writeln!(
        stderr,
        "shutting down: running statements finish, then connections close"
    );
    runtime.block_on(server.shutdown());
    0
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn run_sql(
    command: SqlArgs,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> u8 {
    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            return 1;
        }
    };
    match runtime.block_on(execute(&command, stdin, stdout)) {
        Ok(()) => 0,
        Err(message) => {
            let _ = writeln!(stderr, "error: {message}");
            1
        }
    }
}

async fn execute(
    command: &SqlArgs,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
) -> Result<(), String> {
    let sql = script_text(command, stdin)?;
    let db = open_database(&command.target)?;
    let mut stream = db.sql_stream(&sql).await.map_err(|e| e.to_string())?;
    let schema = stream.schema();
    let mut batches = Vec::new();
    while let Some(batch) = stream.next().await {
        batches.push(batch.map_err(|e| e.to_string())?);
    }
    print_result(stdout, schema, &batches, command.target.format)
        .map_err(|e| format!("writing the result: {e}"))
}

/// The embedded database `target` names.
fn open_database(target: &Target) -> Result<Database, String> {
    let options = DatabaseOptions {
        memory_limit: target.memory_limit,
        ..DatabaseOptions::default()
    };
    Database::open_with(&target.data_dir, options).map_err(|e| e.to_string())
}

/// A runtime for the command's work, with the larger stacks deep statements need.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(crate::THREAD_STACK_SIZE)
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

fn print_result(
    out: &mut dyn Write,
    schema: SchemaRef,
    batches: &[RecordBatch],
    format: OutputFormat,
) -> Result<(), Box<dyn std::error::Error>> {
    if schema.fields().is_empty() {
        // A statement without a result (CREATE, DROP, ...).
        return Ok(());
    }
    let empty = [RecordBatch::new_empty(schema.clone())];
    let batches = if batches.is_empty() {
        &empty[..]
    } else {
        batches
    };
    match format {
        OutputFormat::Table => {
            let table = datafusion::arrow::util::pretty::pretty_format_batches(batches)?;
            writeln!(out, "{table}")?;
        }
        OutputFormat::Csv => {
            let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            for b in batches {
                writer.write(b)?;
            }
        }
        OutputFormat::Json => {
            let mut writer = datafusion::arrow::json::ArrayWriter::new(&mut *out);
            let refs: Vec<&RecordBatch> = batches.iter().collect();
            writer.write_batches(&refs)?;
            writer.finish()?;
            drop(writer);
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_parse() {
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("64K"), Ok(64 << 10));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("2g"), Ok(2 << 30));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("0").is_err());
    }

    #[test]
    fn a_worker_refuses_a_bad_block_cache_size() {
        let Some(Command::Worker(args)) =
            parse(&["worker", "--block-cache", "lots"]).unwrap().command
        else {
            panic!("not a worker command");
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(worker::run(args, &mut out, &mut err), 2);
        let err = String::from_utf8(err).unwrap();
        assert!(
            err.contains("--block-cache") && err.contains("lots"),
            "{err}"
        );
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        parse_command_line(std::iter::once("tessera").chain(args.iter().copied()))
    }

    fn sql(args: &[&str]) -> SqlArgs {
        match parse(args).unwrap().command {
            Some(Command::Sql(sql)) => sql,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn old_command_lines_parse() {
        let c = sql(&["sql", "-d", "x", "--format", "csv", "SELECT 1"]);
        assert_eq!(
            (c.target.data_dir.as_str(), c.target.format, c.sql.len()),
            ("x", OutputFormat::Csv, 1)
        );
        let c = sql(&["sql", "--data-dir=y", "--format=JSON", "-f", "-"]);
        assert_eq!(
            (
                c.target.data_dir.as_str(),
                c.target.format,
                c.file.as_deref()
            ),
            ("y", OutputFormat::Json, Some("-"))
        );
        let c = sql(&["sql", "--memory-limit", "512M", "SELECT 1;", "SELECT 2"]);
        assert_eq!(c.target.memory_limit, Some(512 << 20));
        assert_eq!(c.sql, ["SELECT 1;", "SELECT 2"]);
        // No SQL: the shell, on the data directory or a server.
        let c = sql(&["sql", "-d", "z"]);
        assert!(c.sql.is_empty() && c.file.is_none());
        let bare = parse(&["--connect", "postgresql://u@h:1/db"]).unwrap();
        assert!(bare.command.is_none());
        assert_eq!(
            bare.target.connect.as_deref(),
            Some("postgresql://u@h:1/db")
        );
        assert!(parse(&[]).unwrap().command.is_none());
        for wrong in [
            &["sql", "--bogus"][..],
            &["sql", "-f", "a.sql", "SELECT 1"],
            &["sql", "--format", "xml", "SELECT 1"],
            &["sql", "--memory-limit", "lots", "SELECT 1"],
            &["frobnicate"],
        ] {
            assert!(parse(wrong).is_err(), "{wrong:?}");
        }
        let help = |args: &[&str]| parse(args).unwrap_err().kind();
        assert_eq!(help(&["--help"]), clap::error::ErrorKind::DisplayHelp);
        assert_eq!(
            help(&["sql", "--help"]),
            clap::error::ErrorKind::DisplayHelp
        );
        assert_eq!(help(&["--version"]), clap::error::ErrorKind::DisplayVersion);
    }

    #[test]
    fn options_before_the_command_apply_to_it() {
        // `tessera -d DIR sql ...` once ran on ./tessera-data: the command's own default
        // hid the directory given before it.
        let c = sql(&["-d", "before", "--format", "csv", "sql", "SELECT 1"]);
        assert_eq!(
            (c.target.data_dir.as_str(), c.target.format),
            ("before", OutputFormat::Csv)
        );
        // The command's own option wins.
        let c = sql(&["-d", "before", "sql", "-d", "after", "SELECT 1"]);
        assert_eq!(c.target.data_dir, "after");
        let c = sql(&["sql", "SELECT 1"]);
        assert_eq!(c.target.data_dir, "./tessera-data");
        match parse(&["-d", "served", "--memory-limit", "1G", "serve"]).map(|c| c.command) {
            Ok(Some(Command::Serve(serve))) => {
                assert_eq!(serve.data_dir.as_deref(), Some("served"));
                let limit = serve
                    .memory_limit
                    .as_deref()
                    .map(crate::config::parse_bytes);
                assert_eq!(limit, Some(Ok(1 << 30)));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["-d", "shared", "worker", "--listen", "127.0.0.1:0"]).map(|c| c.command) {
            Ok(Some(Command::Worker(worker))) => assert_eq!(worker.data_dir, "shared"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn exit_codes_follow_the_outcome() {
        let run_args = |args: &[&str]| {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            let code = run(&args, &mut std::io::empty(), &mut out, &mut err);
            (
                code,
                String::from_utf8(out).unwrap(),
                String::from_utf8(err).unwrap(),
            )
        };
        let (code, out, _) = run_args(&["--version"]);
        assert_eq!(
            (code, out.trim()),
            (0, format!("tessera {}", env!("CARGO_PKG_VERSION")).as_str())
        );
        let (code, out, _) = run_args(&["--help"]);
        assert!(
            code == 0 && out.contains("serve") && out.contains("--connect"),
            "{out}"
        );
        let (code, _, err) = run_args(&["sql", "--bogus", "SELECT 1"]);
        assert!(code == 2 && err.contains("--bogus"), "{err}");
        // Refused before connecting: nothing listens on port 1.
        let url = "postgresql://u@127.0.0.1:1/db";
        let (code, _, err) = run_args(&["sql", "--connect", url, "--format", "json", "SELECT 1"]);
        assert!(code == 2 && err.contains("--format json"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db").display().to_string();
        let (code, out, _) = run_args(&["sql", "-d", &db, "--format", "csv", "SELECT 6 * 7 AS x"]);
        assert_eq!((code, out.as_str()), (0, "x\n42\n"));
    }

    #[test]
    fn serve_settings_layer_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        std::fs::write(
            &file,
            "pg_listen = \"127.0.0.1:7000\"\nmax_connections = 3\n",
        )
        .unwrap();
        let file = file.display().to_string();
        let env = |var: &str| match var {
            "TESSERA_CONFIG" => Some(file.clone()),
            "TESSERA_PG_LISTEN" => Some("127.0.0.1:7001".to_string()),
            "TESSERA_DATA_DIR" => Some("/env/dir".to_string()),
            _ => None,
        };
        let args = |a: &[&str]| match parse(&[&["serve"][..], a].concat()).unwrap().command {
            Some(Command::Serve(serve)) => serve,
            other => panic!("{other:?}"),
        };
        let c = serve_config(&args(&["--data-dir", "/flag/dir"]), env).unwrap();
        assert_eq!(c.pg_listen, "127.0.0.1:7001");
        assert_eq!(c.max_connections, 3);
        assert_eq!(c.data_dir, std::path::PathBuf::from("/flag/dir"));
        let c = serve_config(&args(&[]), |_| None).unwrap();
        // `tessera serve` serves Flight SQL by default; a library server only when asked.
        assert_eq!(
            c.flight_address(),
            Some(crate::config::DEFAULT_FLIGHT_LISTEN)
        );
        assert_eq!(
            c,
            ServerConfig {
                flight_listen: Some(crate::config::DEFAULT_FLIGHT_LISTEN.into()),
                ..ServerConfig::default()
            }
        );
        let c = serve_config(&args(&["--flight-listen", "off"]), |_| None).unwrap();
        assert_eq!(c.flight_address(), None);
        assert!(parse(&["serve", "--bogus", "1"]).is_err());
        // TLS from the environment, its key from a flag: only the pair is complete.
        let tls_env = |var: &str| (var == "TESSERA_TLS_CERT").then(|| "c.pem".to_string());
        assert!(serve_config(&args(&[]), tls_env).is_err());
        let c = serve_config(&args(&["--tls-key", "k.pem"]), tls_env).unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(
            (tls.cert.to_str(), tls.key.to_str()),
            (Some("c.pem"), Some("k.pem"))
        );
        assert!(serve_config(&args(&["--max-connections", "x"]), |_| None).is_err());
    }
}
