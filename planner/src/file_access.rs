//! Which server-side files a session may read and write.
//!
//! `COPY ... FROM 'file'`, `COPY ... TO 'file'` and `CREATE EXTERNAL TABLE ... LOCATION`
//! open files as the server process. A database embedded in an application (or the
//! `tessera sql` command) runs as its user and may use any file but the store's own; a
//! server session may only when its role was granted file access (as PostgreSQL's
//! `pg_read_server_files` / `pg_write_server_files`), and only under the configured
//! directories. Paths are resolved (symlinks followed, `..` refused) before they are
//! checked, so a link cannot lead out of an allowed directory.
//!
//! The policy travels in the session's configuration as an extension
//! ([`FileAccess::of`]); a session without one is unrestricted.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use datafusion::common::Result;
use datafusion::execution::context::SessionState;

use crate::error::{ErrorKind, tessera_error};

/// The files a session may open on the server.
#[derive(Debug, Clone, Default)]
pub struct FileAccess {
    /// Directories whose files may be read; `None`: any (an embedded database).
    read: Option<Vec<PathBuf>>,
    /// Directories whose files may be written; `None`: any.
    write: Option<Vec<PathBuf>>,
    /// Directories no statement may read or write: the store's own files.
    forbidden: Vec<PathBuf>,
}

/// Whether a path is opened for reading or writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileUse {
    /// `COPY ... FROM`, `CREATE EXTERNAL TABLE`.
    Read,
    /// `COPY ... TO`.
    Write,
}

impl FileAccess {
    /// Any file but those under `forbidden` (the store's directories).
    pub fn unrestricted(forbidden: Vec<PathBuf>) -> Self {
        Self {
            read: None,
            write: None,
            forbidden: canonical_dirs(forbidden),
        }
    }

    /// Files under `read_dirs` may be read and under `write_dirs` written (an empty list
    /// grants nothing), never under `forbidden`. Directories that do not exist yet are
    /// kept as given and match nothing until they exist.
    pub fn restricted(
        read_dirs: Vec<PathBuf>,
        write_dirs: Vec<PathBuf>,
        forbidden: Vec<PathBuf>,
    ) -> Self {
        Self {
            read: Some(canonical_dirs(read_dirs)),
            write: Some(canonical_dirs(write_dirs)),
            forbidden: canonical_dirs(forbidden),
        }
    }

    /// The policy of a session's state (unrestricted when it has none).
    pub fn of(state: &SessionState) -> Arc<FileAccess> {
        state
            .config()
            .get_extension::<FileAccess>()
            .unwrap_or_default()
    }

    /// Checks that `path` (as a statement wrote it) may be used as `usage` and returns
    /// it resolved. The error is 42501 and names the path and what is allowed.
    pub fn check(&self, path: &str, usage: FileUse) -> Result<PathBuf> {
        let what = match usage {
            FileUse::Read => "read",
            FileUse::Write => "write",
        };
        let denied = |why: String| {
            Err(tessera_error(
                ErrorKind::InsufficientPrivilege,
                format!("permission denied to {what} server file '{path}': {why}"),
            ))
        };
        let local = path.strip_prefix("file://").unwrap_or(path);
        if local.contains("://") {
            // Object stores are reached through the server's own configuration.
            if self.allowed_dirs(usage).is_none() {
                return Ok(PathBuf::from(path));
            }
            return denied("only local files under the configured directories can be used".into());
        }
        let given = Path::new(local);
        if given.components().any(|c| c == Component::ParentDir) {
            return denied("paths with '..' are not accepted".into());
        }
        let resolved = match resolve(given) {
            Ok(p) => p,
            Err(e) => return denied(format!("cannot resolve the path: {e}")),
        };
        if let Some(dir) = self.forbidden.iter().find(|d| resolved.starts_with(d)) {
            return denied(format!(
                "it is inside the database's own storage ({})",
                dir.display()
            ));
        }
        match self.allowed_dirs(usage) {
            None => Ok(resolved),
            Some([]) => denied("this role has no access to server files".into()),
            Some(dirs) if dirs.iter().any(|d| resolved.starts_with(d)) => Ok(resolved),
            Some(dirs) => denied(format!(
                "only files under {} can be used",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    fn allowed_dirs(&self, usage: FileUse) -> Option<&[PathBuf]> {
        match usage {
            FileUse::Read => self.read.as_deref(),
            FileUse::Write => self.write.as_deref(),
        }
    }
}

/// Checks `path` against the policy of `state`.
pub fn check_file(state: &SessionState, path: &str, usage: FileUse) -> Result<PathBuf> {
    FileAccess::of(state).check(path, usage)
}

fn canonical_dirs(dirs: Vec<PathBuf>) -> Vec<PathBuf> {
    dirs.into_iter()
        .map(|d| std::fs::canonicalize(&d).unwrap_or(d))
        .collect()
}

/// `path` with every symlink resolved. A path that does not exist yet (a file COPY
/// will create, a glob) resolves through its deepest existing ancestor; any symlink on
/// the way, the last component included, is followed.
fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if std::fs::symlink_metadata(existing).is_ok() {
            let mut resolved = std::fs::canonicalize(existing)?;
            for part in rest.iter().rev() {
                resolved.push(part);
            }
            return Ok(resolved);
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return Ok(absolute),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_outside_the_allowed_directories_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let import = root.path().join("import");
        let store = root.path().join("store");
        std::fs::create_dir_all(&import).unwrap();
        std::fs::create_dir_all(&store).unwrap();
        std::fs::write(import.join("a.csv"), "0,0,1\n").unwrap();
        std::fs::write(root.path().join("secret"), "x").unwrap();
        std::os::unix::fs::symlink(root.path().join("secret"), import.join("link")).unwrap();
        let access = FileAccess::restricted(vec![import.clone()], vec![], vec![store.clone()]);
        let ok = access
            .check(import.join("a.csv").to_str().unwrap(), FileUse::Read)
            .unwrap();
        assert_eq!(ok, std::fs::canonicalize(import.join("a.csv")).unwrap());
        for bad in [
            root.path().join("secret"),
            import.join("link"),
            import.join("../secret"),
            store.join("catalog.json"),
        ] {
            assert!(
                access.check(bad.to_str().unwrap(), FileUse::Read).is_err(),
                "{bad:?}"
            );
        }
        // No write directories: nothing may be written, not even under import/.
        assert!(
            access
                .check(import.join("out.csv").to_str().unwrap(), FileUse::Write)
                .is_err()
        );
        // Unrestricted still keeps the store out.
        let open = FileAccess::unrestricted(vec![store.clone()]);
        assert!(
            open.check(root.path().join("secret").to_str().unwrap(), FileUse::Read)
                .is_ok()
        );
        assert!(
            open.check(store.join("new.json").to_str().unwrap(), FileUse::Write)
                .is_err()
        );
    }
}
