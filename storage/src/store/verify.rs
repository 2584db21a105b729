//! `VERIFY`: reads every byte of the store (the catalog, every retained version's
//! manifest, every shard file's magic, footer and schema, and every block's checksums)
//! and reports each problem found, naming the array, version, file and block.

use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};

use super::catalog::{ArrayEntry, CATALOG_FILE, Catalog};
use super::snapshot::{Pin, check_block};
use super::{ArrayInfo, Store, format, lock};
use crate::error::{Result, StorageError};

/// One problem [`Store::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The array, or `None` for the catalog itself.
    pub array: Option<String>,
    /// The version whose manifest or block is damaged (`None` for the catalog and
    /// for a shard file as a whole).
    pub version: Option<u64>,
    /// The file (relative to the store) that is damaged.
    pub file: String,
    /// The block, as `(i, j)`, when one block is damaged.
    pub block: Option<String>,
    /// What is wrong.
    pub problem: String,
}

/// A shard file as read by [`Store::verify`]: its bytes, and the record batches its
/// footer lists (`None`: the footer is damaged, already reported).
struct CheckedFile {
    bytes: Bytes,
    footer: Option<BTreeSet<(u64, u64)>>,
}

impl Store {
    /// Checks every byte of the store, or of the array `name`, and returns one
    /// [`Damage`] per problem; none when all is well. Retained versions are pinned
    /// while they are checked, so a concurrent write cannot delete their files.
    pub fn verify(&self, name: Option<&str>) -> Result<Vec<Damage>> {
        let mut out = Vec::new();
        let backend = self.inner.backend().clone();
        if name.is_none() {
            let problem = match backend.read(CATALOG_FILE) {
                Ok(bytes) => format::decode_json::<Catalog>(CATALOG_FILE, &bytes)
                    .err()
                    .map(|e| message_of(&e)),
                Err(e) => Some(e.to_string()),
            };
            if let Some(problem) = problem {
                out.push(Damage {
                    array: None,
                    version: None,
                    file: CATALOG_FILE.into(),
                    block: None,
                    problem,
                });
            }
        }
        let entries: Vec<ArrayEntry> = match name {
            Some(n) => vec![self.inner.entry(n)?],
            None => lock(&self.inner.catalog).arrays.values().cloned().collect(),
        };
        for entry in entries {
            self.verify_array(&entry, &mut out);
        }
        Ok(out)
    }

    fn verify_array(&self, entry: &ArrayEntry, out: &mut Vec<Damage>) {
        let backend = self.inner.backend().clone();
        let info = ArrayInfo::from(entry);
        let schema = format::shard_schema(&info.schema);
        let mut files: BTreeMap<String, Option<CheckedFile>> = BTreeMap::new();
        // Blocks shared by several versions are checked once.
        let mut checked_blocks = BTreeSet::new();
        let mut damage = |version: Option<u64>, file: &str, block: Option<String>, problem| {
            out.push(Damage {
                array: Some(entry.name.clone()),
                version,
                file: file.to_string(),
                block,
                problem,
            })
        };
        for v in &entry.versions {
            if v.manifest.is_empty() {
                continue;
            }
            let _pin = Pin::new(self.inner.clone(), entry.id, v.version);
            let retained = lock(&self.inner.catalog)
                .arrays
                .get(&entry.name)
                .is_some_and(|a| a.id == entry.id && a.versions.contains(v));
            if !retained {
                continue; // retired by a write since the check began
            }
            let manifest = backend
                .read(&v.manifest)
                .and_then(|bytes| self.inner.check_manifest(entry, v, &bytes));
            let manifest = match manifest {
                Ok(m) => m,
                Err(e) => {
                    damage(Some(v.version), &v.manifest, None, message_of(&e));
                    continue;
                }
            };
            for (file, size) in &manifest.files {
                if files.contains_key(file) {
                    continue;
                }
                let checked = match backend.read(file) {
                    Err(e) => {
                        damage(Some(v.version), file, None, message_of(&e));
                        None
                    }
                    Ok(bytes) if bytes.len() as u64 != *size => {
                        damage(
                            Some(v.version),
                            file,
                            None,
                            format!("file has {} bytes, the manifest says {size}", bytes.len()),
                        );
                        None
                    }
                    Ok(bytes) => {
                        let footer =
                            match format::check_shard_file(&bytes, &schema).and_then(|batches| {
                                readable_by_arrow(&bytes)?;
                                Ok(batches)
                            }) {
                                Ok(batches) => Some(batches.into_iter().collect()),
                                Err(message) => {
                                    damage(
                                        None,
                                        file,
                                        None,
                                        format!("not a valid Arrow IPC file: {message}"),
                                    );
                                    None
                                }
                            };
                        Some(CheckedFile { bytes, footer })
                    }
                };
                files.insert(file.clone(), checked);
            }
            for b in &manifest.blocks {
                if !checked_blocks.insert((b.file.clone(), b.offset)) {
                    continue;
                }
                let Some(Some(file)) = files.get(&b.file) else {
                    if !files.contains_key(&b.file) {
                        damage(
                            Some(v.version),
                            &v.manifest,
                            Some(b.key.to_string()),
                            format!(
                                "block is in {}, which the manifest's files do not list",
                                b.file
                            ),
                        );
                    }
                    continue; // the file itself was reported
                };
                if let Some(footer) = &file.footer
                    && !footer.contains(&(b.offset, b.length))
                {
                    damage(
                        Some(v.version),
                        &b.file,
                        Some(b.key.to_string()),
                        format!(
                            "the file's Arrow IPC footer does not list the block's record batch at {}..+{}",
                            b.offset, b.length
                        ),
                    );
                }
                if let Err(problem) = check_block(&info, &schema, b, &file.bytes) {
                    damage(Some(v.version), &b.file, Some(b.key.to_string()), problem);
                }
            }
        }
    }
}

/// Opens the file with arrow-ipc's own reader and reads every record batch: what any
/// Arrow implementation (pyarrow's `ipc.open_file`) would do with it.
fn readable_by_arrow(bytes: &Bytes) -> std::result::Result<(), String> {
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let reader =
            arrow_ipc::reader::FileReader::try_new(std::io::Cursor::new(bytes.clone()), None)
                .map_err(|e| format!("arrow-ipc cannot open it: {e}"))?;
        for batch in reader {
            batch.map_err(|e| format!("arrow-ipc cannot read a record batch: {e}"))?;
        }
        Ok(())
    }));
    read.unwrap_or_else(|_| Err("arrow-ipc cannot read it".into()))
}

/// An error's message without the file name the [`Damage`] already carries.
fn message_of(e: &StorageError) -> String {
    match e {
        StorageError::CorruptCatalog { message, .. } => message.clone(),
        StorageError::Corruption { message, .. } => message.clone(),
        StorageError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            "the file is missing".into()
        }
        other => other.to_string(),
    }
}
