//! The `tessera` command: run SQL against a data directory. See [`tessera_server::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    install_logging();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = tessera_server::cli::run(
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
/// binary installs a subscriber; the libraries just emit events.
fn install_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TESSERA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
