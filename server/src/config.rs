//! Settings of `tessera serve`: a TOML file, environment variables and command-line
//! flags, in that order of precedence (flags win). Every key is documented in
//! `docs/server.md`.
//!
//! ```toml
//! data_dir = "./tessera-data"
//! pg_listen = "127.0.0.1:5433"
//! flight_listen = "127.0.0.1:50051" # Arrow Flight SQL; "off" serves none
//! max_connections = 100
//! superuser_reserved_connections = 3 # of max_connections, for auth.superusers only
//! max_startup_connections = 64     # connections still authenticating
//! startup_timeout = "5s"
//! statement_timeout = "0"          # default for every session; SET changes it
//!
//! [auth]
//! method = "scram-sha-256"         # or "trust" (the default: loopback clients only)
//! superusers = ["alice"]
//!
//! [[users]]
//! name = "alice"
//! password = "secret"              # or scram_verifier = "SCRAM-SHA-256$4096:..."
//!
//! [tls]
//! cert = "server.crt"
//! key = "server.key"
//! required = true                  # reject plaintext connections
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Every setting of the server. Fields left out of a TOML file keep their defaults.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The data directory (created if missing). Default `./tessera-data`.
    pub data_dir: PathBuf,
    /// Address the PostgreSQL protocol listens on. Default `127.0.0.1:5433`.
    pub pg_listen: String,
    /// Address of the Arrow Flight SQL service; `"off"` (or unset, for a server
    /// started as a library) serves none. `tessera serve` defaults it to
    /// [`DEFAULT_FLIGHT_LISTEN`].
    pub flight_listen: Option<String>,
    /// Memory budget of all queries together, e.g. `"2G"`. Default: 70% of RAM.
    pub memory_limit: Option<String>,
    /// Decoded blocks kept in memory for the next read, charged to `memory_limit`,
    /// e.g. `"1G"`; `"0"` turns the cache off. Default: a quarter of `memory_limit`.
    pub block_cache: Option<String>,
    /// Authenticated connections served at once, as PostgreSQL counts backends; one
    /// more gets SQLSTATE 53300 once it has authenticated. Default 100.
    pub max_connections: usize,
    /// Of `max_connections`, the slots only `auth.superusers` may take (at most
    /// `max_connections - 1`: one slot is always open to every user). Default 3.
    pub superuser_reserved_connections: usize,
    /// Connections that have not finished authenticating, at most; a newer one closes
    /// the one that has waited longest (with 53300). Default 64.
    pub max_startup_connections: usize,
    /// The longest protocol message a client may send (a query, a bound parameter
    /// set, a COPY chunk), e.g. `"64M"`. Longer ones end the connection with 54000.
    /// Flight SQL takes it as gRPC's message limit, for both directions.
    pub max_message_size: String,
    /// Time a client has from connecting to finishing authentication. Default `"5s"`.
    pub startup_timeout: String,
    /// On shutdown, how long running statements may take to finish. Default `"30s"`.
    pub shutdown_timeout: String,
    /// Default `statement_timeout` of every session (`"0"`: none); `SET` changes it.
    pub statement_timeout: String,
    /// How clients authenticate.
    pub auth: AuthConfig,
    /// Users for password authentication.
    pub users: Vec<UserConfig>,
    /// TLS certificate and key; no TLS without them.
    pub tls: Option<TlsConfig>,
    /// Which roles may read and write files on the server.
    pub files: FilesConfig,
    /// Workers (`tessera worker`) that run block dataflows over stored matrices, as
    /// `host:port` or `http://host:port`; none: everything runs in this process.
    /// They read the data directory themselves, so it must be shared with them.
    pub workers: Vec<String>,
    /// Workers `tessera serve` starts itself on loopback (a one-command trial of
    /// distributed execution), beside those in `workers`. Default 0.
    pub local_workers: usize,
    /// The secret workers require of coordinators (the same string on both sides;
    /// `TESSERA_CLUSTER_SECRET`). Local workers get a fresh one when unset.
    pub cluster_secret: Option<String>,
}

/// The `[files]` table: server-side files (`COPY ... FROM 'file'`, `COPY ... TO 'file'`,
/// `CREATE EXTERNAL TABLE ... LOCATION`), as PostgreSQL's `pg_read_server_files` and
/// `pg_write_server_files` roles. No role has them unless listed here. `COPY ... FROM
/// STDIN` / `TO STDOUT` and Flight ingest need none.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FilesConfig {
    /// Roles that may read server files.
    pub read_roles: Vec<String>,
    /// Roles that may write server files.
    pub write_roles: Vec<String>,
    /// Directories readable files must be under. Default: the data directory's `import/`.
    pub read_dirs: Vec<PathBuf>,
    /// Directories written files must be under. Default: the data directory's `export/`.
    pub write_dirs: Vec<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("./tessera-data"),
            pg_listen: "127.0.0.1:5433".to_string(),
            flight_listen: None,
            memory_limit: None,
            block_cache: None,
            max_connections: 100,
            superuser_reserved_connections: 3,
            max_startup_connections: 64,
            max_message_size: "64M".to_string(),
            startup_timeout: "5s".to_string(),
            shutdown_timeout: "30s".to_string(),
            statement_timeout: "0".to_string(),
            auth: AuthConfig::default(),
            users: Vec::new(),
            tls: None,
            files: FilesConfig::default(),
            workers: Vec::new(),
            local_workers: 0,
            cluster_secret: None,
        }
    }
}

/// The `[auth]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `trust` (no password) or `scram-sha-256`.
    pub method: AuthMethod,
    /// With `trust`, also accept clients that are not on the loopback interface.
    /// Default false: trust is for local use.
    pub trust_remote: bool,
    /// Users who may take the `superuser_reserved_connections` slots. Default none.
    pub superusers: Vec<String>,
}

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum AuthMethod {
    /// No password; loopback clients only unless `auth.trust_remote`.
    #[default]
    #[serde(rename = "trust")]
    Trust,
    /// SCRAM-SHA-256 against `[[users]]`.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
}

/// One `[[users]]` entry: a name and either a password or a SCRAM verifier.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The user name clients log in with.
    pub name: String,
    /// The password in clear text (the server derives a SCRAM verifier at start).
    pub password: Option<String>,
    /// A PostgreSQL SCRAM verifier, `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`
    /// (what `pg_authid.rolpassword` holds), so the password need not be stored.
    pub scram_verifier: Option<String>,
}

impl std::fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field(
                "scram_verifier",
                &self.scram_verifier.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The `[tls]` table.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server certificate (chain).
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Reject connections that do not use TLS.
    #[serde(default)]
    pub required: bool,
}

/// The Flight SQL address `tessera serve` listens on unless told otherwise.
pub const DEFAULT_FLIGHT_LISTEN: &str = "127.0.0.1:50051";

/// The environment variables `tessera serve` reads, with the key each sets.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("TESSERA_DATA_DIR", "data_dir"),
    ("TESSERA_PG_LISTEN", "pg_listen"),
    ("TESSERA_FLIGHT_LISTEN", "flight_listen"),
    ("TESSERA_MEMORY_LIMIT", "memory_limit"),
    ("TESSERA_BLOCK_CACHE", "block_cache"),
    ("TESSERA_MAX_CONNECTIONS", "max_connections"),
    ("TESSERA_WORKERS", "workers"),
    ("TESSERA_LOCAL_WORKERS", "local_workers"),
    ("TESSERA_CLUSTER_SECRET", "cluster_secret"),
    (
        "TESSERA_SUPERUSER_RESERVED_CONNECTIONS",
        "superuser_reserved_connections",
    ),
    ("TESSERA_MAX_STARTUP_CONNECTIONS", "max_startup_connections"),
    ("TESSERA_MAX_MESSAGE_SIZE", "max_message_size"),
    ("TESSERA_STARTUP_TIMEOUT", "startup_timeout"),
    ("TESSERA_SHUTDOWN_TIMEOUT", "shutdown_timeout"),
    ("TESSERA_STATEMENT_TIMEOUT", "statement_timeout"),
    ("TESSERA_AUTH_METHOD", "auth.method"),
    ("TESSERA_AUTH_TRUST_REMOTE", "auth.trust_remote"),
    ("TESSERA_AUTH_SUPERUSERS", "auth.superusers"),
    ("TESSERA_USERS", "users"),
    ("TESSERA_TLS_CERT", "tls.cert"),
    ("TESSERA_TLS_KEY", "tls.key"),
    ("TESSERA_TLS_REQUIRED", "tls.required"),
    ("TESSERA_FILES_READ_ROLES", "files.read_roles"),
    ("TESSERA_FILES_WRITE_ROLES", "files.write_roles"),
    ("TESSERA_FILES_READ_DIRS", "files.read_dirs"),
    ("TESSERA_FILES_WRITE_DIRS", "files.write_dirs"),
];

impl ServerConfig {
    /// Reads a TOML configuration file.
    pub fn from_file(path: &Path) -> Result<ServerConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses TOML text; unknown keys are errors.
    pub fn from_toml(text: &str) -> Result<ServerConfig, String> {
        let config: ServerConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// Sets the key `key` (as named in the TOML file, tables dotted: `tls.cert`) from
    /// text, as flags and environment variables do. Lists are comma-separated; `users`
    /// is `name:password` or `name:SCRAM-SHA-256$...` entries. The value itself is
    /// checked here; what depends on other keys (users for SCRAM, a TLS key beside its
    /// certificate) is checked by [`ServerConfig::validate`] once every layer is applied.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "data_dir" => self.data_dir = PathBuf::from(value),
            "pg_listen" => self.pg_listen = value.to_string(),
            "flight_listen" => self.flight_listen = Some(value.to_string()),
            "memory_limit" => {
                parse_bytes(value)?;
                self.memory_limit = Some(value.to_string());
            }
            "block_cache" => {
                parse_cache_bytes(value)?;
                self.block_cache = Some(value.to_string());
            }
            "max_connections" => {
                self.max_connections = value
                    .trim()
                    .parse()
                    .map_err(|_| format!("max_connections: '{value}' is not a whole number"))?;
            }
            "superuser_reserved_connections" => {
                self.superuser_reserved_connections = whole_number(key, value)?;
            }
            "max_startup_connections" => {
                self.max_startup_connections = whole_number(key, value)?;
            }
            "workers" => self.workers = list(value),
            "local_workers" => self.local_workers = whole_number(key, value)?,
            "cluster_secret" => self.cluster_secret = Some(value.to_string()),
            "max_message_size" => self.max_message_size = value.to_string(),
            "startup_timeout" => self.startup_timeout = value.to_string(),
            "shutdown_timeout" => self.shutdown_timeout = value.to_string(),
            "statement_timeout" => self.statement_timeout = value.to_string(),
            "auth.method" => {
                self.auth.method = match value.trim().to_ascii_lowercase().as_str() {
                    "trust" => AuthMethod::Trust,
                    "scram-sha-256" => AuthMethod::ScramSha256,
                    other => {
                        return Err(format!(
                            "auth.method: '{other}' is neither trust nor scram-sha-256"
                        ));
                    }
                }
            }
            "auth.trust_remote" => self.auth.trust_remote = boolean(key, value)?,
            "auth.superusers" => self.auth.superusers = list(value),
            "users" => self.users = users(value)?,
            "tls.cert" => self.tls_mut().cert = PathBuf::from(value),
            "tls.key" => self.tls_mut().key = PathBuf::from(value),
            "tls.required" => self.tls_mut().required = boolean(key, value)?,
            "files.read_roles" => self.files.read_roles = list(value),
            "files.write_roles" => self.files.write_roles = list(value),
            "files.read_dirs" => {
                self.files.read_dirs = list(value).into_iter().map(PathBuf::from).collect()
            }
            "files.write_dirs" => {
                self.files.write_dirs = list(value).into_iter().map(PathBuf::from).collect()
            }
            other => return Err(format!("unknown setting '{other}'")),
        }
        self.validate_values()
    }

    /// The `[tls]` table, made empty (no certificate or key yet) if missing.
    fn tls_mut(&mut self) -> &mut TlsConfig {
        self.tls.get_or_insert_with(|| TlsConfig {
            cert: PathBuf::new(),
            key: PathBuf::new(),
            required: false,
        })
    }

    /// Applies the `TESSERA_*` variables `get` returns (see [`ENV_VARS`]). Call
    /// [`ServerConfig::validate`] once the flags are applied too.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        for (var, key) in ENV_VARS {
            if let Some(value) = get(var).filter(|v| !v.is_empty()) {
                self.set(key, &value).map_err(|e| format!("{var}: {e}"))?;
            }
        }
        Ok(())
    }

    /// Checks every setting, and the ones that depend on each other (users for
    /// SCRAM, a TLS certificate and key together).
    pub fn validate(&self) -> Result<(), String> {
        self.validate_values()?;
        for user in &self.users {
            match (&user.password, &user.scram_verifier) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => {
                    return Err(format!(
                        "user '{}' needs exactly one of password and scram_verifier",
                        user.name
                    ));
                }
            }
        }
        if self.auth.method == AuthMethod::ScramSha256 && self.users.is_empty() {
            return Err(
                "auth.method = \"scram-sha-256\" needs at least one [[users]] entry".into(),
            );
        }
        if let Some(tls) = &self.tls
            && (tls.cert.as_os_str().is_empty() || tls.key.as_os_str().is_empty())
        {
            return Err("tls needs both a certificate (tls.cert) and a key (tls.key)".into());
        }
        Ok(())
    }

    /// Checks the values that are text in the file (sizes, durations, counts).
    /// The worker addresses of `workers`, as URLs (`host:port` reads as
    /// `http://host:port`).
    pub fn worker_urls(&self) -> Result<Vec<url::Url>, String> {
        self.workers
            .iter()
            .map(|w| worker_url(w).map_err(|e| format!("workers: '{w}' {e}")))
            .collect()
    }

    fn validate_values(&self) -> Result<(), String> {
        self.worker_urls()?;
        if let Some(m) = &self.memory_limit {
            parse_bytes(m).map_err(|e| format!("memory_limit: {e}"))?;
        }
        if let Some(c) = &self.block_cache {
            parse_cache_bytes(c).map_err(|e| format!("block_cache: {e}"))?;
        }
        parse_bytes(&self.max_message_size).map_err(|e| format!("max_message_size: {e}"))?;
        parse_duration(&self.startup_timeout).map_err(|e| format!("startup_timeout: {e}"))?;
        parse_duration(&self.shutdown_timeout).map_err(|e| format!("shutdown_timeout: {e}"))?;
        parse_duration(&self.statement_timeout).map_err(|e| format!("statement_timeout: {e}"))?;
        if self.max_connections == 0 {
            return Err("max_connections must be at least 1".into());
        }
        if self.max_startup_connections == 0 {
            return Err("max_startup_connections must be at least 1".into());
        }
        Ok(())
    }

    /// The address to serve Flight SQL on: `flight_listen` unless unset or `"off"`.
    pub fn flight_address(&self) -> Option<&str> {
        self.flight_listen
            .as_deref()
            .map(str::trim)
            .filter(|a| !a.is_empty() && !a.eq_ignore_ascii_case("off"))
    }

    /// `memory_limit` in bytes.
    pub fn memory_limit_bytes(&self) -> Option<usize> {
        self.memory_limit
            .as_deref()
            .and_then(|m| parse_bytes(m).ok())
    }

    /// `block_cache` in bytes, when set.
    pub fn block_cache_bytes(&self) -> Option<usize> {
        self.block_cache
            .as_deref()
            .and_then(|c| parse_cache_bytes(c).ok())
    }

    /// `max_message_size` in bytes.
    pub fn max_message_size_bytes(&self) -> usize {
        parse_bytes(&self.max_message_size).unwrap_or(64 << 20)
    }

    /// `startup_timeout` as a duration.
    pub fn startup_timeout_duration(&self) -> Duration {
        parse_duration(&self.startup_timeout).unwrap_or(Duration::from_secs(5))
    }

    /// `shutdown_timeout` as a duration.
    pub fn shutdown_timeout_duration(&self) -> Duration {
        parse_duration(&self.shutdown_timeout).unwrap_or(Duration::from_secs(30))
    }

    /// `statement_timeout` as a duration; `None` for no limit.
    pub fn statement_timeout_duration(&self) -> Option<Duration> {
        parse_duration(&self.statement_timeout)
            .ok()
            .filter(|d| !d.is_zero())
    }
}

/// `true`/`on`/`yes`/`1` or `false`/`off`/`no`/`0`, as PostgreSQL reads a boolean.
fn boolean(key: &str, value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" => Ok(true),
        "false" | "off" | "no" | "0" => Ok(false),
        _ => Err(format!("{key}: '{value}' is not a boolean (true or false)")),
    }
}

/// A comma-separated list; blanks around items are dropped, and so are empty items.
fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_string)
        .collect()
}

/// `name:password` or `name:SCRAM-SHA-256$...` entries, comma-separated (a password
/// with a comma must go in the file). Splits at the first colon: a name has none.
fn users(value: &str) -> Result<Vec<UserConfig>, String> {
    list(value)
        .into_iter()
        .map(|entry| {
            let (name, secret) = entry.split_once(':').ok_or_else(|| {
                format!(
                    "users: '{}' is not name:password",
                    entry.split(':').next().unwrap_or("")
                )
            })?;
            let secret = secret.to_string();
            let is_verifier = secret.starts_with("SCRAM-SHA-256$");
            Ok(UserConfig {
                name: name.trim().to_string(),
                password: (!is_verifier).then(|| secret.clone()),
                scram_verifier: is_verifier.then_some(secret),
            })
        })
        .collect()
}

fn whole_number(key: &str, value: &str) -> Result<usize, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("{key}: '{value}' is not a whole number"))
}

/// A cache size: [`parse_bytes`], or `0` / `off` for none.
pub(crate) fn parse_cache_bytes(text: &str) -> Result<usize, String> {
    let t = text.trim();
    if t == "0" || t.eq_ignore_ascii_case("off") {
        return Ok(0);
    }
    parse_bytes(t)
}

/// `1024`, `64K`, `512M`, `2G` (powers of 1024; a trailing `B` or `iB` is allowed).
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let t = text.trim().to_ascii_uppercase();
    let t = t.trim_end_matches("IB").trim_end_matches('B');
    let (digits, shift) = match t.chars().last() {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        Some('T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    digits
        .trim()
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(1usize << shift))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("cannot read '{text}' as a size (e.g. 512M, 2G)"))
}

/// A duration the way PostgreSQL writes `statement_timeout`: a number of milliseconds,
/// or a number with a unit `us`, `ms`, `s`, `min`, `h`, `d` (`'100ms'`, `'1.5s'`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim().trim_matches('\'').trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("cannot read '{text}' as a duration (e.g. 100ms, 5s, 2min)"))?;
    let millis = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "ms" => value,
        "us" => value / 1000.0,
        "s" | "sec" => value * 1e3,
        "min" => value * 60e3,
        "h" => value * 3600e3,
        "d" => value * 86400e3,
        other => return Err(format!("unknown unit '{other}' in duration '{text}'")),
    };
    if !millis.is_finite() || millis < 0.0 {
        return Err(format!("'{text}' is not a valid duration"));
    }
    Ok(Duration::from_micros((millis * 1000.0) as u64))
}

/// A worker's address as a URL: `host:port` or `http://host:port`.
pub fn worker_url(text: &str) -> Result<url::Url, String> {
    let text = text.trim();
    let full = if text.contains("://") {
        text.to_string()
    } else {
        format!("http://{text}")
    };
    let url = url::Url::parse(&full).map_err(|e| format!("is not an address: {e}"))?;
    if url.scheme() != "http" || url.host().is_none() || url.port().is_none() {
        return Err("is not host:port (a worker address, e.g. 127.0.0.1:7001)".into());
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_env_and_flags_layer() {
        let mut config = ServerConfig::from_toml(
            r#"
            data_dir = "/srv/tessera"
            pg_listen = "0.0.0.0:5433"
            max_connections = 7
            [auth]
            method = "scram-sha-256"
            [[users]]
            name = "alice"
            password = "pw"
            [tls]
            cert = "c.pem"
            key = "k.pem"
            required = true
            "#,
        )
        .unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/srv/tessera"));
        assert_eq!(config.max_connections, 7);
        assert_eq!(config.auth.method, AuthMethod::ScramSha256);
        assert!(config.tls.as_ref().unwrap().required);
        config
            .apply_env(|v| (v == "TESSERA_PG_LISTEN").then(|| "127.0.0.1:6000".to_string()))
            .unwrap();
        assert_eq!(config.pg_listen, "127.0.0.1:6000");
        config.set("max_connections", "9").unwrap();
        assert_eq!(config.max_connections, 9);
        assert!(ServerConfig::from_toml("bogus = 1").is_err());
        assert!(ServerConfig::from_toml("[auth]\nmethod = \"scram-sha-256\"").is_err());
        assert!(config.set("startup_timeout", "soon").is_err());
    }

    #[test]
    fn every_table_key_has_an_environment_variable() {
        let vars = [
            ("TESSERA_AUTH_METHOD", "scram-sha-256"),
            ("TESSERA_AUTH_TRUST_REMOTE", "on"),
            ("TESSERA_AUTH_SUPERUSERS", "alice, bob"),
            (
                "TESSERA_USERS",
                "alice:pw:with:colons,bob:SCRAM-SHA-256$4096:c2FsdA==$a:b",
            ),
            ("TESSERA_TLS_CERT", "c.pem"),
            ("TESSERA_TLS_KEY", "k.pem"),
            ("TESSERA_TLS_REQUIRED", "true"),
            ("TESSERA_FILES_READ_ROLES", "loader"),
            ("TESSERA_FILES_WRITE_DIRS", "/out,/more"),
        ];
        let mut config = ServerConfig::default();
        config
            .apply_env(|v| {
                vars.iter()
                    .find(|(k, _)| *k == v)
                    .map(|(_, x)| x.to_string())
            })
            .unwrap();
        assert_eq!(config.auth.method, AuthMethod::ScramSha256);
        assert!(config.auth.trust_remote);
        assert_eq!(config.auth.superusers, ["alice", "bob"]);
        assert_eq!(config.users[0].name, "alice");
        assert_eq!(config.users[0].password.as_deref(), Some("pw:with:colons"));
        assert_eq!(
            config.users[1].scram_verifier.as_deref(),
            Some("SCRAM-SHA-256$4096:c2FsdA==$a:b")
        );
        let tls = config.tls.as_ref().unwrap();
        assert_eq!(
            (tls.cert.as_path(), tls.key.as_path(), tls.required),
            (Path::new("c.pem"), Path::new("k.pem"), true)
        );
        assert_eq!(config.files.read_roles, ["loader"]);
        assert_eq!(
            config.files.write_dirs,
            [PathBuf::from("/out"), PathBuf::from("/more")]
        );
        // Every variable is named once and names a key `set` knows.
        for (var, key) in ENV_VARS {
            let mut c = ServerConfig::default();
            assert!(
                !c.set(key, "").is_err_and(|e| e.contains("unknown setting")),
                "{var}"
            );
        }
        // SCRAM without users, or a certificate without its key, is refused once all is applied.
        let mut c = ServerConfig::default();
        c.apply_env(|v| (v == "TESSERA_AUTH_METHOD").then(|| "scram-sha-256".into()))
            .unwrap();
        assert!(c.validate().is_err());
        let mut c = ServerConfig::default();
        c.apply_env(|v| (v == "TESSERA_TLS_CERT").then(|| "c.pem".into()))
            .unwrap();
        assert!(c.validate().is_err());
        assert!(
            ServerConfig::default()
                .set("auth.trust_remote", "maybe")
                .is_err()
        );
    }

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("'1.5s'"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2min"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("fast").is_err());
        assert_eq!(parse_bytes("64M"), Ok(64 << 20));
        assert!(parse_bytes("0").is_err());
        assert_eq!(parse_cache_bytes("off"), Ok(0));
        assert_eq!(parse_cache_bytes("0"), Ok(0));
        assert_eq!(parse_cache_bytes("2G"), Ok(2 << 30));
    }
}
