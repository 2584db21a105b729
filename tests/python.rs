//! Runs NumPy/SciPy from tests: the reference implementation and the writer of fixture
//! files. `.ci/run` installs both; a missing NumPy fails the test rather than skipping it.

use std::path::Path;
use std::process::Command;

/// Runs `script` with `python3`, in `dir`, and returns its stdout.
pub fn run(dir: &Path, script: &str) -> String {
    run_args(dir, script, &[])
}

/// Like [`run`], with command-line arguments for the script (`sys.argv[1:]`).
pub fn run_args(dir: &Path, script: &str, args: &[&str]) -> String {
    run_env(dir, script, args, &[])
}

/// Like [`run_args`], with environment variables set for the script (`PYTHONPATH`).
pub fn run_env(dir: &Path, script: &str, args: &[&str], env: &[(&str, &Path)]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir)
        .output()
        .expect("python3 must be installed (.ci/run installs it with numpy and scipy)");
    assert!(
        out.status.success(),
        "python failed:\n{}\n--- script ---\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The Python interpreter: `$PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}
