//! `tessera worker`: a process that runs the stages of block dataflows that a
//! coordinator (`tessera serve --workers ...`) sends it, reading the stored matrices
//! from the shared data directory itself; and the local workers `tessera serve
//! --local-workers N` starts. See docs/distributed.md.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Args;
use tessera_storage::Store;

/// The flags of `tessera worker`.
#[derive(Debug, Clone, Args)]
pub(super) struct WorkerArgs {
    /// Address to serve coordinators on (port 0: any free port, printed at start).
    #[arg(
        long,
        value_name = "ADDR",
        env = "TESSERA_WORKER_LISTEN",
        default_value = "127.0.0.1:7001"
    )]
    listen: String,
    /// The data directory the coordinator serves, shared with this process (read only).
    #[arg(
        short = 'd',
        long,
        value_name = "DIR",
        env = "TESSERA_DATA_DIR",
        default_value = "./tessera-data"
    )]
    pub(super) data_dir: String,
    /// The cluster's secret that coordinators must present (set it in the environment
    /// rather than on the command line). Required unless --listen is a loopback address.
    #[arg(
        long,
        value_name = "SECRET",
        env = "TESSERA_CLUSTER_SECRET",
        hide_env_values = true
    )]
    cluster_secret: Option<String>,
    /// Bytes of decoded blocks the worker keeps, so a block its tasks read again is not
    /// read and decoded again (`512M`, `2G`; `0` or `off` for none).
    #[arg(
        long,
        value_name = "SIZE",
        env = "TESSERA_BLOCK_CACHE",
        default_value = "1G"
    )]
    block_cache: String,
    /// Exit when standard input closes (how `tessera serve --local-workers` ties its
    /// workers' lives to its own).
    #[arg(long, hide = true)]
    exit_with_stdin: bool,
}

/// The line a worker prints on standard output once it listens.
const LISTENING: &str = "tessera worker listening on ";

/// Runs `tessera worker` until SIGINT / SIGTERM (or, with `--exit-with-stdin`, until
/// standard input closes).
pub(super) fn run(args: WorkerArgs, stdout: &mut dyn Write, stderr: &mut dyn Write) -> u8 {
    let runtime = match super::runtime() {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            return 1;
        }
    };
    let addr: SocketAddr = match args.listen.parse() {
        Ok(a) => a,
        Err(_) => {
            let _ = writeln!(
                stderr,
                "error: --listen: '{}' is not host:port (e.g. 127.0.0.1:7001)",
                args.listen
            );
            return 2;
        }
    };
    let cache = match crate::config::parse_cache_bytes(&args.block_cache) {
        Ok(bytes) => bytes,
        Err(e) => {
            let _ = writeln!(stderr, "error: --block-cache: {e}");
            return 2;
        }
    };
    if !std::path::Path::new(&args.data_dir).is_dir() {
        let _ = writeln!(
            stderr,
            "error: data directory {} does not exist (a worker reads the directory its coordinator serves)",
            args.data_dir
        );
        return 1;
    }
    // The coordinator's data directory holds its block store in `store/`.
    let secret = args.cluster_secret.clone().filter(|s| !s.is_empty());
    if secret.is_none() && !addr.ip().is_loopback() {
        let _ = writeln!(
            stderr,
            "error: a worker listening on {addr} needs the cluster's secret \
             (TESSERA_CLUSTER_SECRET), so that only its coordinators can send it plans"
        );
        return 2;
    }
    let store = match Store::open_reader(std::path::Path::new(&args.data_dir).join("store")) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(stderr, "error: data directory {}: {e}", args.data_dir);
            return 1;
        }
    };
    // Blocks are named by the version that wrote them, so an entry is never stale; a
    // worker has no memory pool of its own, so the size is the cache's only bound.
    store.set_block_cache(cache, std::sync::Arc::new(tessera_storage::Unlimited));
    let listener = match runtime.block_on(tokio::net::TcpListener::bind(addr)) {
        Ok(l) => l,
        Err(e) => {
            let _ = writeln!(stderr, "error: cannot listen on {addr}: {e}");
            return 1;
        }
    };
    let local = listener.local_addr().unwrap_or(addr);
    let _ = writeln!(
        stdout,
        "{LISTENING}http://{local} reading {}",
        args.data_dir
    );
    let _ = stdout.flush();
    let worker = match tessera_planner::distributed::worker(store, secret.as_deref()) {
        Ok(w) => w,
        Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            return 2;
        }
    };
    let exit_with_stdin = args.exit_with_stdin;
    let stop = async move {
        if exit_with_stdin {
            let eof = tokio::task::spawn_blocking(|| {
                let mut sink = Vec::new();
                let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            });
            tokio::select! {
                _ = super::wait_for_stop_signal() => {}
                _ = eof => {}
            }
        } else {
            super::wait_for_stop_signal().await;
        }
    };
    let served = runtime.block_on(
        tonic::transport::Server::builder()
            // A coordinator that vanished is noticed, and its streams dropped.
            .http2_keepalive_interval(Some(Duration::from_secs(5)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .layer(tonic::service::InterceptorLayer::new(SecretCheck(secret)))
            .add_service(worker.into_worker_server())
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                stop,
            ),
    );
    // Blocking reads of stdin may still be parked; they end with the process.
    runtime.shutdown_background();
    match served {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(stderr, "error: the worker service stopped: {e}");
            1
        }
    }
}

/// Refuses (UNAUTHENTICATED, and logged) every request that does not carry the
/// cluster's secret; with no secret (a loopback-only worker) everything is accepted.
#[derive(Clone)]
struct SecretCheck(Option<String>);

impl tonic::service::Interceptor for SecretCheck {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(secret) = &self.0 else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get(tessera_planner::distributed::SECRET_HEADER)
            .map(|v| v.as_bytes());
        if presented.is_some_and(|p| same_bytes(p, secret.as_bytes())) {
            return Ok(request);
        }
        let from = request
            .remote_addr()
            .map_or_else(|| "an unknown address".to_string(), |a| a.to_string());
        tracing::warn!(
            "refused a request from {from}: {} cluster secret",
            if presented.is_some() { "a wrong" } else { "no" }
        );
        Err(tonic::Status::unauthenticated(
            "this worker takes plans only from coordinators with the cluster's secret",
        ))
    }
}

/// `a == b` in time that depends only on their lengths.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Workers `tessera serve --local-workers N` started on loopback. They exit when this
/// value is dropped, or when this process ends however it ends (their standard input
/// closes).
pub(super) struct LocalWorkers {
    children: Vec<Child>,
    /// Their addresses, `http://127.0.0.1:PORT`.
    pub(super) urls: Vec<String>,
}

impl LocalWorkers {
    /// Starts `n` workers of this executable on the data directory `data_dir`, each on
    /// a free loopback port, and waits until each listens.
    pub(super) fn start(n: usize, data_dir: &str, secret: &str) -> Result<Self, String> {
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot find this executable to start workers: {e}"))?;
        let mut workers = LocalWorkers {
            children: Vec::new(),
            urls: Vec::new(),
        };
        for k in 0..n {
            let mut child = Command::new(&exe)
                .args(["worker", "--listen", "127.0.0.1:0", "--exit-with-stdin"])
                .arg("--data-dir")
                .arg(data_dir)
                .env("TESSERA_CLUSTER_SECRET", secret)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("cannot start local worker {k}: {e}"))?;
            let stdout = child.stdout.take();
            workers.children.push(child);
            let mut line = String::new();
            if let Some(out) = stdout {
                let _ = BufReader::new(out).read_line(&mut line);
            }
            let url = line
                .strip_prefix(LISTENING)
                .and_then(|rest| rest.split_whitespace().next())
                .ok_or_else(|| format!("local worker {k} did not start (see its error above)"))?;
            workers.urls.push(url.to_string());
        }
        Ok(workers)
    }
}

impl Drop for LocalWorkers {
    fn drop(&mut self) {
        for child in &mut self.children {
            // Closing its stdin asks the worker to exit; wait a moment, then make sure.
            drop(child.stdin.take());
        }
        for child in &mut self.children {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
    }
}

/// A random secret for the local workers of one `tessera serve` (32 bytes, hex).
pub(super) fn fresh_secret() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    // The system's generator; should it ever fail, the workers still listen on
    // loopback only.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
