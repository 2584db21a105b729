//! The `tessera` command. See [`tessera_server::cli`].

fn main() -> std::process::ExitCode {
    tessera_server::cli::main()
}
