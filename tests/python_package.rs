//! The `tessera` Python package (`clients/python`), pip-installed as a user installs
//! it, against an in-process server over both of its protocols: NumPy and SciPy
//! matrices in and back bit for bit, a matmul checked against NumPy, SQLSTATEs on
//! errors, pandas. The checks are in `tests/clients/python_package.py`.

use std::path::{Path, PathBuf};
use std::process::Command;

use tessera_server::Server;
use tessera_server::config::ServerConfig;

use crate::python;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Copies the package's sources (not a build left in the clone) to `to`.
fn copy_package(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let name = entry.file_name();
        let path = entry.path();
        if path.is_dir() {
            if name != "build"
                && name != "__pycache__"
                && !name.to_string_lossy().ends_with(".egg-info")
            {
                copy_package(&path, &to.join(&name));
            }
        } else {
            std::fs::copy(&path, to.join(&name)).unwrap();
        }
    }
}

/// `pip install --no-deps --no-build-isolation --target` of a copy of the package
/// (pip builds in the source tree; the copy keeps the clone clean). Offline: the
/// build backend (setuptools, wheel) is installed by `.ci/run`.
fn pip_install(work: &Path) -> PathBuf {
    let source = work.join("package");
    copy_package(&Path::new(ROOT).join("clients/python"), &source);
    let site = work.join("site");
    let out = Command::new(python::python())
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
        ])
        .args(["--disable-pip-version-check", "--no-index", "--target"])
        .arg(&site)
        .arg(&source)
        .output()
        .expect("python3 with pip must be installed (.ci/run)");
    assert!(
        out.status.success(),
        "pip install of clients/python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(site.join("tessera/__init__.py").is_file());
    site
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_package_installs_and_round_trips_matrices_over_flight_and_pgwire() {
    let dir = tempfile::tempdir().unwrap();
    let site = tokio::task::spawn_blocking({
        let work = dir.path().to_path_buf();
        move || pip_install(&work)
    })
    .await
    .unwrap();
    let config = ServerConfig {
        data_dir: dir.path().join("db"),
        pg_listen: "127.0.0.1:0".into(),
        flight_listen: Some("127.0.0.1:0".into()),
        ..ServerConfig::default()
    };
    let server = Server::builder().config(config).build().await.unwrap();
    let flight = format!("grpc://{}", server.flight_addr().unwrap());
    let pg = format!("postgresql://tessera@{}/tessera", server.local_addr());
    let script =
        std::fs::read_to_string(Path::new(ROOT).join("tests/clients/python_package.py")).unwrap();
    let cwd = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        python::run_env(&cwd, &script, &[&flight, &pg], &[("PYTHONPATH", &site)])
    })
    .await
    .unwrap();
    assert_eq!(out.trim(), "ok");
    server.shutdown().await;
}
