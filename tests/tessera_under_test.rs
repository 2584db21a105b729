//! The `tessera` command, built by the test build itself so that it shares the tests'
//! dependency features: building `tessera-server`'s own binary from a test would
//! resolve features without dev-dependencies and rebuild half the tree.

fn main() -> std::process::ExitCode {
    tessera_server::cli::main()
}
