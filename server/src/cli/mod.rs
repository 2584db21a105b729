//! The `tessera` command line, as a library function so it can be tested in-process;
//! `src/main.rs` only calls [`main`], which installs logging and calls [`run`].
//!
//! ```text
//! tessera sql [--data-dir DIR] [--format table|csv|json] [--memory-limit BYTES] "SQL"
//! tessera sql [--data-dir DIR] [--format ...] -f script.sql      (-f - reads stdin)
//! tessera serve [--config FILE] [--data-dir DIR] [--pg-listen ADDR] [--flight-listen ADDR]
//! ```

use std::io::{Read, Write};
use std::process::ExitCode;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use futures::StreamExt;

use crate::{Database, DatabaseOptions, Server, ServerConfig};

const USAGE: &str = "\
tessera: a SQL database for matrices and arrays

USAGE:
    tessera sql [OPTIONS] \"SQL; ...\"     run statements, print the last result
    tessera sql [OPTIONS] -f FILE         run a script file (-f - reads standard input)
    tessera serve [SERVE OPTIONS]         serve the data directory over PostgreSQL and Flight SQL
    tessera --help | --version

OPTIONS:
    -d, --data-dir DIR        data directory (default ./tessera-data; created if missing)
        --format FORMAT       table (default), csv or json
        --memory-limit BYTES  memory budget for queries, e.g. 2G, 512M (default 70% of RAM)
    -f, --file FILE           read the statements from FILE ('-' for standard input)

SERVE OPTIONS (flags win over TESSERA_* environment variables, which win over the file):
    -c, --config FILE         TOML settings (see docs/server.md; also TESSERA_CONFIG)
    -d, --data-dir DIR        data directory (default ./tessera-data; TESSERA_DATA_DIR)
        --pg-listen ADDR      PostgreSQL protocol address (default 127.0.0.1:5433; TESSERA_PG_LISTEN)
        --flight-listen ADDR  Arrow Flight SQL address (default 127.0.0.1:50051, off for none; TESSERA_FLIGHT_LISTEN)
        --memory-limit BYTES  memory budget for queries (TESSERA_MEMORY_LIMIT)
        --max-connections N   connections at once (default 100; TESSERA_MAX_CONNECTIONS)
    SIGINT or SIGTERM stops accepting, lets running statements finish and exits 0.

Logging goes to standard error; set TESSERA_LOG (e.g. TESSERA_LOG=debug) to see more.

EXAMPLE:
    tessera sql -d ./db \"CREATE MATRIX m (2, 2); INSERT INTO m VALUES (0, 1, 5.0); SELECT * FROM m\"
";

/// The `tessera` process: logging to stderr, then [`run`] on the process's arguments
/// and standard streams.
pub fn main() -> ExitCode {
    install_logging();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = run(
        &args,
        &mut std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
        // Not locked for the whole run: `tessera serve`'s worker threads log and report
        // panics to stderr too, and would wait on the lock forever.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutputFormat {
    Table,
    Csv,
    Json,
}

#[derive(Debug)]
struct SqlCommand {
    data_dir: String,
    format: OutputFormat,
    memory_limit: Option<usize>,
    file: Option<String>,
    sql: Vec<String>,
}

/// Runs the command line `args` (without the program name), reading a script from
/// `stdin` for `-f -`, printing results to `stdout` and `error: <message>` to `stderr`.
/// Returns the process exit code: 0 on success, 1 when a statement fails, 2 for a
/// usage mistake.
pub fn run(
    args: &[String],
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> u8 {
    match args.first().map(String::as_str) {
        None | Some("-h" | "--help" | "help") => {
            let _ = write!(stdout, "{USAGE}");
            if args.is_empty() { 2 } else { 0 }
        }
        Some("-V" | "--version") => {
            let _ = writeln!(stdout, "tessera {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Some("sql") => match parse_sql_args(&args[1..]) {
            Ok(Some(command)) => run_sql(command, stdin, stdout, stderr),
            Ok(None) => {
                let _ = write!(stdout, "{USAGE}");
                0
            }
            Err(message) => {
                let _ = writeln!(stderr, "error: {message}\n\nrun `tessera --help` for usage");
                2
            }
        },
        Some("serve") => match parse_serve_args(&args[1..], |var| std::env::var(var).ok()) {
            Ok(Some(config)) => run_serve(config, stderr),
            Ok(None) => {
                let _ = write!(stdout, "{USAGE}");
                0
            }
            Err(message) => {
                let _ = writeln!(stderr, "error: {message}\n\nrun `tessera --help` for usage");
                2
            }
        },
        Some(other) => {
            let _ = writeln!(
                stderr,
                "error: unknown command '{other}'\n\nrun `tessera --help` for usage"
            );
            2
        }
    }
}

/// `Ok(None)` for `--help`.
fn parse_sql_args(args: &[String]) -> Result<Option<SqlCommand>, String> {
    let mut command = SqlCommand {
        data_dir: "./tessera-data".into(),
        format: OutputFormat::Table,
        memory_limit: None,
        file: None,
        sql: Vec::new(),
    };
    // `--name=value` is `--name value`.
    let args: Vec<String> = args
        .iter()
        .flat_map(|a| match a.split_once('=') {
            Some((name, value)) if a.starts_with("--") => vec![name.to_string(), value.to_string()],
            _ => vec![a.clone()],
        })
        .collect();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "-d" | "--data-dir" => command.data_dir = value(arg)?,
            "-f" | "--file" => command.file = Some(value(arg)?),
            "--format" => {
                command.format = match value(arg)?.to_ascii_lowercase().as_str() {
                    "table" => OutputFormat::Table,
                    "csv" => OutputFormat::Csv,
                    "json" => OutputFormat::Json,
                    other => {
                        return Err(format!("unknown format '{other}'; use table, csv or json"));
                    }
                }
            }
            "--memory-limit" => command.memory_limit = Some(parse_bytes(&value(arg)?)?),
            s if s.starts_with('-') && s.len() > 1 => return Err(format!("unknown option '{s}'")),
            _ => command.sql.push(arg.clone()),
        }
    }
    match (&command.file, command.sql.is_empty()) {
        (Some(_), false) => Err("give either SQL or -f FILE, not both".into()),
        (None, true) => Err("no SQL given; pass statements or -f FILE".into()),
        _ => Ok(Some(command)),
    }
}

/// `1024`, `64K`, `512M`, `2G` (powers of 1024; a trailing `B` or `iB` is allowed).
fn parse_bytes(text: &str) -> Result<usize, String> {
    crate::config::parse_bytes(text)
        .map_err(|_| format!("cannot read '{text}' as a memory size (e.g. 512M, 2G)"))
}

/// The settings of `tessera serve`: the file (`--config` or `TESSERA_CONFIG`), then the
/// environment (`env`), then the flags. `Ok(None)` for `--help`.
fn parse_serve_args(
    args: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<ServerConfig>, String> {
    let args: Vec<String> = args
        .iter()
        .flat_map(|a| match a.split_once('=') {
            Some((name, value)) if a.starts_with("--") => vec![name.to_string(), value.to_string()],
            _ => vec![a.clone()],
        })
        .collect();
    let mut file = env("TESSERA_CONFIG").filter(|f| !f.is_empty());
    let mut flags = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let key = match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "-c" | "--config" => {
                file = Some(value(arg)?);
                continue;
            }
            "-d" | "--data-dir" => "data_dir",
            "--pg-listen" => "pg_listen",
            "--flight-listen" => "flight_listen",
            "--memory-limit" => "memory_limit",
            "--max-connections" => "max_connections",
            other => return Err(format!("unknown option '{other}' for serve")),
        };
        flags.push((key, value(arg)?));
    }
    let mut config = match file {
        Some(path) => ServerConfig::from_file(std::path::Path::new(&path))?,
        None => ServerConfig::default(),
    };
    config.apply_env(env)?;
    for (key, value) in flags {
        config
            .set(key, &value)
            .map_err(|e| format!("--{}: {e}", key.replace('_', "-")))?;
    }
    if config.flight_listen.is_none() {
        config.flight_listen = Some(crate::config::DEFAULT_FLIGHT_LISTEN.to_string());
    }
    Ok(Some(config))
}

fn run_serve(config: ServerConfig, stderr: &mut dyn Write) -> u8 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(crate::THREAD_STACK_SIZE)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(stderr, "error: cannot start the runtime: {e}");
            return 1;
        }
    };
    let data_dir = config.data_dir.display().to_string();
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
    command: SqlCommand,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> u8 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(crate::THREAD_STACK_SIZE)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(stderr, "error: cannot start the runtime: {e}");
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
    command: &SqlCommand,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
) -> Result<(), String> {
    let sql = match &command.file {
        Some(path) if path == "-" => {
            let mut text = String::new();
            stdin
                .read_to_string(&mut text)
                .map_err(|e| format!("reading standard input: {e}"))?;
            text
        }
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?,
        None => command.sql.join(" "),
    };
    let options = DatabaseOptions {
        memory_limit: command.memory_limit,
        ..DatabaseOptions::default()
    };
    let db = Database::open_with(&command.data_dir, options).map_err(|e| e.to_string())?;
    let mut stream = db.sql_stream(&sql).await.map_err(|e| e.to_string())?;
    let schema = stream.schema();
    let mut batches = Vec::new();
    while let Some(batch) = stream.next().await {
        batches.push(batch.map_err(|e| e.to_string())?);
    }
    print_result(stdout, schema, &batches, command.format)
        .map_err(|e| format!("writing the result: {e}"))
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
    fn arguments_parse() {
        let args =
            |a: &[&str]| parse_sql_args(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let c = args(&["-d", "x", "--format", "csv", "SELECT 1"])
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.data_dir.as_str(), c.format, c.sql.len()),
            ("x", OutputFormat::Csv, 1)
        );
        let c = args(&["--data-dir=y", "--format=json", "-f", "-"])
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.data_dir.as_str(), c.format, c.file.as_deref()),
            ("y", OutputFormat::Json, Some("-"))
        );
        assert!(args(&["--bogus"]).is_err());
        assert!(args(&[]).is_err());
        assert!(args(&["-f", "a.sql", "SELECT 1"]).is_err());
        assert!(args(&["--help"]).unwrap().is_none());
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
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let c = parse_serve_args(&args(&["--data-dir", "/flag/dir"]), env)
            .unwrap()
            .unwrap();
        assert_eq!(c.pg_listen, "127.0.0.1:7001");
        assert_eq!(c.max_connections, 3);
        assert_eq!(c.data_dir, std::path::PathBuf::from("/flag/dir"));
        let c = parse_serve_args(&args(&[]), |_| None).unwrap().unwrap();
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
        let c = parse_serve_args(&args(&["--flight-listen", "off"]), |_| None)
            .unwrap()
            .unwrap();
        assert_eq!(c.flight_address(), None);
        assert!(parse_serve_args(&args(&["--bogus", "1"]), |_| None).is_err());
        assert!(parse_serve_args(&args(&["--max-connections", "x"]), |_| None).is_err());
    }
}
