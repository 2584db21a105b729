//! Store tests over the in-memory and fault-injecting backends. Real files, kill -9 and
//! byte-level corruption are tested end to end in `tests/storage_store.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use std::sync::Arc;

use crate::backend::{Backend, FaultKind, FaultyBackend, MemoryBackend};
use crate::block::{Block, CsrBlock, DenseBlock};
use crate::error::StorageError;
use crate::partition::{
    HASH_PLACEMENT, MIXED_PLACEMENT, Partitioning, Placement, UNRECORDED_PLACEMENT,
};
use crate::schema::{ArraySchema, BlockKey};
use crate::store::catalog::CATALOG_FILE;
use crate::store::{Store, StoreOptions, WriteMode};

/// A block whose every cell is derived from `(seed, key, r, c)`; sparse when `seed` is odd.
fn block_for(schema: &ArraySchema, key: &BlockKey, seed: u64) -> Block {
    let (rows, cols) = schema.block_shape(key);
    let f = |r: usize, c: usize| {
        (seed * 1000 + key.0[0] as u64 * 100 + key.0[1] as u64 * 10) as f64
            + (r * cols + c) as f64 * 0.5
    };
    if seed % 2 == 1 {
        let d = DenseBlock::from_fn(rows, cols, |r, c| {
            if (r + c) % 3 == 0 { f(r, c) + 1.0 } else { 0.0 }
        });
        Block::Sparse(CsrBlock::from_dense(&d))
    } else {
        Block::Dense(DenseBlock::from_fn(rows, cols, |r, c| f(r, c) + 1.0))
    }
}

fn keys(schema: &ArraySchema) -> Vec<BlockKey> {
    let g = schema.block_grid();
    (0..g[0] as i64)
        .flat_map(|i| (0..g[1] as i64).map(move |j| BlockKey::matrix(i, j)))
        .collect()
}

fn write_all(store: &Store, name: &str, seed: u64) -> crate::Result<u64> {
    let mut w = store.writer(name, WriteMode::Replace)?;
    let schema = w.base().info().schema.clone();
    for k in keys(&schema) {
        w.put_block(k.clone(), block_for(&schema, &k, seed))?;
    }
    w.commit()
}

fn assert_version(store: &Store, name: &str, version: Option<u64>, seed: u64) {
    let snap = store.snapshot(name, version).unwrap();
    let schema = snap.info().schema.clone();
    for k in keys(&schema) {
        let got = snap.read_block(&k).unwrap().expect("block stored");
        assert!(
            got.same_cells(&block_for(&schema, &k, seed)),
            "block {k} of version {:?}",
            version
        );
    }
}

fn new_store(backend: Arc<dyn Backend>, keep: u32) -> Store {
    Store::open(
        backend,
        StoreOptions {
            keep_versions: keep,
        },
    )
    .unwrap()
}

#[test]
fn versions_commit_read_and_retire() {
    let mem = MemoryBackend::new();
    let store = new_store(Arc::new(mem.clone()), 2);
    let schema = ArraySchema::matrix(10, 7, 4, 3).unwrap();
    store
        .create_array(
            "m",
            schema.clone(),
            Some(Partitioning::Hash { shards: 3 }),
            None,
        )
        .unwrap();
    assert_eq!(store.array("m").unwrap().current().version, 0);
    assert!(store.snapshot("m", None).unwrap().blocks().is_empty());

    let v1 = write_all(&store, "m", 2).unwrap();
    let v2 = write_all(&store, "m", 3).unwrap();
    assert_eq!((v1, v2), (1, 2));
    assert_version(&store, "m", None, 3);
    assert_version(&store, "m", Some(1), 2);
    let old = store.snapshot("m", Some(1)).unwrap();

    // keep 2: version 3 retires version 1, but a live snapshot keeps its files.
    write_all(&store, "m", 4).unwrap();
    let versions: Vec<u64> = store
        .array("m")
        .unwrap()
        .versions
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(versions, vec![2, 3]);
    match store.snapshot("m", Some(1)) {
        Err(StorageError::VersionNotFound { retained, .. }) => assert_eq!(retained, "2, 3"),
        other => panic!("expected VersionNotFound, got {other:?}"),
    }
    let k = BlockKey::matrix(1, 1);
    assert!(
        old.read_block(&k)
            .unwrap()
            .unwrap()
            .same_cells(&block_for(&schema, &k, 2))
    );
    assert!(mem.list("arrays/1/v1/").unwrap().len() > 1);
    // A reader (one execution's view) reads through a file cache of its own and pins
    // the version as the snapshot does, past the snapshot itself.
    assert!(old.cached_file_bytes() > 0);
    let reader = old.reader();
    assert_eq!(reader.cached_file_bytes(), 0);
    drop(old);
    assert!(
        mem.list("arrays/1/v1/").unwrap().len() > 1,
        "the reader pins v1"
    );
    let k0 = BlockKey::matrix(0, 0);
    assert!(
        reader
            .read_block(&k0)
            .unwrap()
            .unwrap()
            .same_cells(&block_for(&schema, &k0, 2))
    );
    assert!(reader.cached_file_bytes() > 0);
    drop(reader);
    assert!(
        mem.list("arrays/1/v1/").unwrap().is_empty(),
        "retired files are deleted"
    );

    // Reopen: same state.
    drop(store);
    let store = new_store(Arc::new(mem.clone()), 2);
    assert_version(&store, "m", None, 4);
    assert_version(&store, "m", Some(2), 3);
    store.drop_array("m").unwrap();
    assert!(matches!(
        store.snapshot("m", None),
        Err(StorageError::ArrayNotFound(_))
    ));
    assert!(mem.list("arrays/").unwrap().is_empty());
}

#[test]
fn update_mode_reuses_unchanged_blocks_and_deletes_empty_ones() {
    let mem = MemoryBackend::new();
    let store = new_store(Arc::new(mem.clone()), 1);
    let schema = ArraySchema::matrix(8, 8, 4, 4).unwrap();
    store.create_array("m", schema.clone(), None, None).unwrap();
    write_all(&store, "m", 2).unwrap();
    let mut w = store.writer("m", WriteMode::Update).unwrap();
    let k = BlockKey::matrix(0, 1);
    w.put_block(k.clone(), block_for(&schema, &k, 5)).unwrap();
    w.put_block(
        BlockKey::matrix(1, 1),
        Block::Dense(DenseBlock::zeros(4, 4)),
    )
    .unwrap();
    assert_eq!(w.commit().unwrap(), 2);
    let snap = store.snapshot("m", None).unwrap();
    assert_eq!(snap.blocks().len(), 3);
    assert!(
        snap.read_block(&k)
            .unwrap()
            .unwrap()
            .same_cells(&block_for(&schema, &k, 5))
    );
    let k0 = BlockKey::matrix(0, 0);
    assert!(
        snap.read_block(&k0)
            .unwrap()
            .unwrap()
            .same_cells(&block_for(&schema, &k0, 2))
    );
    assert_eq!(snap.read_block(&BlockKey::matrix(1, 1)).unwrap(), None);
    // Version 1 is retired (keep 1) but its files are still used by version 2.
    drop(snap);
    drop(store);
    let store = new_store(Arc::new(mem), 1);
    assert!(
        store
            .snapshot("m", None)
            .unwrap()
            .read_block(&k0)
            .unwrap()
            .is_some()
    );
}

#[test]
fn bad_puts_and_concurrent_writes_are_rejected() {
    let store = Store::in_memory();
    let schema = ArraySchema::matrix(10, 10, 5, 5).unwrap();
    store.create_array("m", schema, None, None).unwrap();
    assert!(matches!(
        store.create_array("m", ArraySchema::matrix(1, 1, 1, 1).unwrap(), None, None),
        Err(StorageError::ArrayExists(_))
    ));
    let mut w = store.writer("m", WriteMode::Update).unwrap();
    let err = w
        .put_block(
            BlockKey::matrix(2, 0),
            Block::Dense(DenseBlock::zeros(5, 5)),
        )
        .unwrap_err();
    assert!(err.to_string().contains("outside the block grid"), "{err}");
    let err = w
        .put_block(
            BlockKey::matrix(0, 0),
            Block::Dense(DenseBlock::zeros(4, 5)),
        )
        .unwrap_err();
    assert!(err.to_string().contains("must be 5x5"), "{err}");
    let mut first = store.writer("m", WriteMode::Update).unwrap();
    first
        .put_block(
            BlockKey::matrix(0, 0),
            Block::Dense(DenseBlock::from_fn(5, 5, |r, c| (r + c) as f64)),
        )
        .unwrap();
    w.put_block(
        BlockKey::matrix(1, 1),
        Block::Dense(DenseBlock::from_fn(5, 5, |r, _| r as f64)),
    )
    .unwrap();
    first.commit().unwrap();
    assert!(matches!(w.commit(), Err(StorageError::WriteConflict(_))));
    assert_eq!(store.snapshot("m", None).unwrap().blocks().len(), 1);
}

/// Fails every write, fsync and rename of a commit in turn. After each failure the
/// store (as it is, and after a simulated power loss and reopen) shows the old version
/// exactly or, only if the catalog rename landed, the new one exactly; a later write
/// succeeds; no stray files stay behind after reopen.
#[test]
fn injected_faults_leave_the_store_consistent() {
    for kind in [FaultKind::Write, FaultKind::Sync, FaultKind::Rename] {
        let mut nth = 1;
        loop {
            let mem = MemoryBackend::new();
            let faulty = Arc::new(FaultyBackend::new(Arc::new(mem.clone())));
            let store = new_store(faulty.clone(), 3);
            let schema = ArraySchema::matrix(9, 9, 4, 4).unwrap();
            store
                .create_array("m", schema, Some(Partitioning::Hash { shards: 2 }), None)
                .unwrap();
            write_all(&store, "m", 2).unwrap();

            faulty.arm(kind, nth);
            let result = write_all(&store, "m", 3);
            let fired = faulty.injected() > 0;
            faulty.disarm();
            if !fired {
                result.unwrap();
                assert_version(&store, "m", None, 3);
                break; // every operation of this kind has been failed once
            }
            assert!(
                result.is_err(),
                "{kind:?} #{nth}: an injected fault must fail the commit"
            );
            let current = store.snapshot("m", None).unwrap().version();
            assert_version(&store, "m", None, if current == 1 { 2 } else { 3 });

            drop(store);
            mem.crash();
            let store = new_store(Arc::new(mem.clone()), 3);
            let current = store.snapshot("m", None).unwrap().version();
            assert!(
                current == 1 || current == 2,
                "{kind:?} #{nth}: version {current}"
            );
            assert_version(&store, "m", None, if current == 1 { 2 } else { 3 });
            let v = write_all(&store, "m", 4).unwrap();
            assert_version(&store, "m", Some(v), 4);
            let referenced: usize = store.snapshot("m", None).unwrap().manifest().files.len();
            let files = mem.list("arrays/").unwrap();
            let manifests = files
                .iter()
                .filter(|f| f.ends_with("manifest.json"))
                .count();
            let versions = store.array("m").unwrap().versions.len() - 1; // version 0 has no manifest
            assert_eq!(manifests, versions, "{kind:?} #{nth}: {files:?}");
            assert!(files.len() >= referenced);
            nth += 1;
        }
        assert!(nth > 1, "{kind:?} was never exercised");
        eprintln!("{kind:?}: failed each of {} operations in turn", nth - 1);
    }
}

/// A power loss right after a commit returns keeps the version: every file and
/// directory entry it needs was fsync'd.
#[test]
fn acknowledged_commits_survive_power_loss() {
    let mem = MemoryBackend::new();
    let store = new_store(Arc::new(mem.clone()), 5);
    store
        .create_array("m", ArraySchema::matrix(12, 5, 5, 5).unwrap(), None, None)
        .unwrap();
    for seed in 2..6 {
        let v = write_all(&store, "m", seed).unwrap();
        mem.crash();
        let reopened = new_store(Arc::new(mem.clone()), 5);
        assert_eq!(reopened.snapshot("m", None).unwrap().version(), v);
        assert_version(&reopened, "m", None, seed);
    }
}

#[test]
fn a_fixed_block_format_is_honoured_by_every_write() {
    use crate::BlockFormat;
    for (format, sparse_input) in [(BlockFormat::Dense, true), (BlockFormat::Csr, false)] {
        let store = Store::in_memory();
        let schema = ArraySchema::matrix(4, 4, 4, 4).unwrap();
        let info = store
            .create_array_with_format("m", schema, None, None, Some(format))
            .unwrap();
        assert_eq!(info.block_format, Some(format));
        // One non-zero (sparse by density) or all non-zeros (dense by density).
        let dense = DenseBlock::from_fn(4, 4, |r, c| {
            if sparse_input && (r, c) != (1, 2) {
                0.0
            } else {
                (r * 4 + c + 1) as f64
            }
        });
        let block = Block::Dense(dense.clone()).into_preferred_format();
        assert_ne!(block.format(), format, "the input is in the other format");
        let mut w = store.writer("m", WriteMode::Replace).unwrap();
        w.put_block(BlockKey::matrix(0, 0), block).unwrap();
        w.commit().unwrap();
        let snap = store.snapshot("m", None).unwrap();
        assert_eq!(snap.blocks()[0].formats, vec![format]);
        let read = snap.read_block(&BlockKey::matrix(0, 0)).unwrap().unwrap();
        assert_eq!(read.format(), format);
        assert_eq!(read.to_dense(), dense);
        assert_eq!(store.array("m").unwrap().block_format, Some(format));
    }
}

/// A new array's write is invisible until its commit, which adds the array with all its
/// blocks at once; a crash at any point before leaves no array and, after the reopen,
/// no file; a name taken meanwhile fails the commit and deletes what was written.
#[test]
fn a_new_array_appears_with_its_blocks_or_not_at_all() {
    let schema = ArraySchema::matrix(9, 9, 3, 3).unwrap();
    let mem = MemoryBackend::new();
    let store = new_store(Arc::new(mem.clone()), 5);
    store
        .create_array("keep", schema.clone(), None, None)
        .unwrap();
    write_all(&store, "keep", 4).unwrap();
    let files_before = mem.list("arrays/").unwrap();

    // Crashed before the commit: nothing of it survives the reopen.
    let mut w = store
        .create_array_writer("new", schema.clone(), None, None, None)
        .unwrap();
    for k in keys(&schema) {
        w.put_block(k.clone(), block_for(&schema, &k, 1)).unwrap();
    }
    w.sync_written().unwrap();
    assert!(store.array("new").is_err(), "visible before its commit");
    std::mem::forget(w); // the process dies: no cleanup runs
    assert!(mem.list("arrays/").unwrap().len() > files_before.len());
    let store = new_store(Arc::new(mem.clone()), 5);
    assert!(store.array("new").is_err());
    assert_eq!(mem.list("arrays/").unwrap(), files_before);
    assert_version(&store, "keep", None, 4);

    // Committed: the array and its blocks, at version 1, survive a crash.
    let mut w = store
        .create_array_writer("new", schema.clone(), None, Some(3), None)
        .unwrap();
    for k in keys(&schema) {
        w.put_block(k.clone(), block_for(&schema, &k, 1)).unwrap();
    }
    assert_eq!(w.commit().unwrap(), 1);
    mem.crash();
    let store = new_store(Arc::new(mem.clone()), 5);
    let info = store.array("new").unwrap();
    assert_eq!(
        info.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [0, 1]
    );
    assert_eq!(info.keep_versions, 3);
    assert_version(&store, "new", None, 1);
    assert_eq!(write_all(&store, "new", 2).unwrap(), 2);

    // A name taken between the start and the commit: ArrayExists, files deleted.
    let files_before = mem.list("arrays/").unwrap();
    let mut w = store
        .create_array_writer("late", schema.clone(), None, None, None)
        .unwrap();
    w.put_block(
        BlockKey::matrix(0, 0),
        block_for(&schema, &BlockKey::matrix(0, 0), 3),
    )
    .unwrap();
    store
        .create_array("late", schema.clone(), None, None)
        .unwrap();
    assert!(matches!(w.commit(), Err(StorageError::ArrayExists(n)) if n == "late"));
    assert_eq!(mem.list("arrays/").unwrap(), files_before);
    assert!(store.array("late").unwrap().current().blocks == 0);
    // A name in use from the start is refused at once.
    assert!(matches!(
        store.create_array_writer("keep", schema, None, None, None),
        Err(StorageError::ArrayExists(_))
    ));
}

/// The open deletes only what the catalog proves unused: files of dropped arrays, of
/// retired versions, a stale `catalog.json.tmp`; files it cannot account for stay.
#[test]
fn the_open_deletes_only_what_the_catalog_proves_unused() {
    let schema = ArraySchema::matrix(6, 6, 3, 3).unwrap();
    let mem = MemoryBackend::new();
    let store = new_store(Arc::new(mem.clone()), 5);
    store.create_array("a", schema.clone(), None, None).unwrap();
    write_all(&store, "a", 2).unwrap();
    store.create_array("b", schema.clone(), None, None).unwrap();
    write_all(&store, "b", 2).unwrap();
    let a = store.array("a").unwrap().id;
    let b = store.array("b").unwrap().id;
    let kept = mem.list("").unwrap();
    let stray = |path: &str| {
        mem.write(path, b"x").unwrap();
        mem.sync(path).unwrap();
    };
    // Provably unused.
    stray(&format!("arrays/{a}/v7/shard-0.arrow"));
    stray(&format!("arrays/{a}/v7/manifest.json"));
    store.drop_array("b").unwrap();
    stray(&format!("arrays/{b}/v1/shard-1.arrow"));
    stray("catalog.json.tmp");
    // Not accounted for: left alone.
    let unknown = [
        format!("arrays/{a}/notes.txt"),
        "arrays/999/v1/shard-0.arrow".to_string(),
        "README".to_string(),
    ];
    for u in &unknown {
        stray(u);
    }
    drop(store);
    let store = new_store(Arc::new(mem.clone()), 5);
    let mut expected: Vec<String> = kept
        .into_iter()
        .filter(|f| !f.starts_with(&format!("arrays/{b}/")))
        .chain(unknown.iter().cloned())
        .collect();
    expected.sort();
    assert_eq!(mem.list("").unwrap(), expected);
    assert_version(&store, "a", None, 2);
}

/// One damaged manifest: the open succeeds, that array reports it on every use and
/// keeps every file, the other array is served.
#[test]
fn a_damaged_manifest_does_not_stop_the_open() {
    let schema = ArraySchema::matrix(6, 6, 3, 3).unwrap();
    let mem = MemoryBackend::new();
    let store = new_store(Arc::new(mem.clone()), 5);
    for name in ["a", "b"] {
        store
            .create_array(name, schema.clone(), None, None)
            .unwrap();
        write_all(&store, name, 2).unwrap();
    }
    let a = store.array("a").unwrap().id;
    let manifest = format!("arrays/{a}/v1/manifest.json");
    let mut bytes = mem.read(&manifest).unwrap().to_vec();
    let k = bytes.len() - 3;
    bytes[k] ^= 0x20;
    mem.write(&manifest, &bytes).unwrap();
    mem.write(&format!("arrays/{a}/v9/shard-0.arrow"), b"?")
        .unwrap();
    let before = mem.list("").unwrap();
    drop(store);

    let store = new_store(Arc::new(mem.clone()), 5);
    assert_eq!(
        mem.list("").unwrap(),
        before,
        "files of a damaged array were deleted"
    );
    assert!(store.damage("a").unwrap().contains(&manifest));
    assert_eq!(store.damage("b"), None);
    for _ in 0..2 {
        match store.snapshot("a", None) {
            Err(StorageError::CorruptCatalog { file, .. }) => assert_eq!(file, manifest),
            other => panic!("expected a corrupt manifest, got {other:?}"),
        }
    }
    assert!(store.writer("a", WriteMode::Update).is_err());
    assert_version(&store, "b", None, 2);
    let problems = store.verify(None).unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].file, manifest);
    // Dropping the damaged array removes it and its files.
    store.drop_array("a").unwrap();
    assert!(mem.list(&format!("arrays/{a}/")).unwrap().is_empty());
    assert!(store.verify(None).unwrap().is_empty());
}

/// A store with array files but no catalog, or a catalog that does not decode, is
/// refused and left exactly as it was.
#[test]
fn no_catalog_no_open() {
    let schema = ArraySchema::matrix(6, 6, 3, 3).unwrap();
    let mem = MemoryBackend::new();
    let store = new_store(Arc::new(mem.clone()), 5);
    store.create_array("a", schema, None, None).unwrap();
    write_all(&store, "a", 2).unwrap();
    drop(store);
    let catalog = mem.read("catalog.json").unwrap();
    for bad in [
        None,
        Some(b"TESSERA1 00000000\n{}".to_vec()),
        Some(catalog[..40].to_vec()),
    ] {
        match &bad {
            None => mem.delete("catalog.json").unwrap(),
            Some(b) => mem.write("catalog.json", b).unwrap(),
        }
        let before: Vec<(String, bytes::Bytes)> = mem
            .list("")
            .unwrap()
            .into_iter()
            .map(|f| (f.clone(), mem.read(&f).unwrap()))
            .collect();
        match Store::open(Arc::new(mem.clone()), StoreOptions::default()) {
            Err(StorageError::CorruptCatalog { file, .. }) => assert_eq!(file, "catalog.json"),
            other => panic!("expected a refused open, got {other:?}"),
        }
        let after: Vec<(String, bytes::Bytes)> = mem
            .list("")
            .unwrap()
            .into_iter()
            .map(|f| (f.clone(), mem.read(&f).unwrap()))
            .collect();
        assert_eq!(after, before);
    }
    mem.write("catalog.json", &catalog).unwrap();
    let store = new_store(Arc::new(mem.clone()), 5);
    assert_version(&store, "a", None, 2);
}

/// Places block `(bi, bj)` by its block row alone: another function than this build's.
fn by_block_row(key: &[i64]) -> u64 {
    key[0] as u64
}

/// Every stored block's shard, by key.
fn shards_of(store: &Store, name: &str, version: Option<u64>) -> Vec<(BlockKey, u32)> {
    let snap = store.snapshot(name, version).unwrap();
    snap.blocks()
        .into_iter()
        .map(|b| (b.key, b.shard))
        .collect()
}

/// Every version records the function that placed its blocks: this build's by default,
/// another when a writer is told so; a write that keeps blocks placed by another
/// function records a mix; a repartition places every block by this build again,
/// while the versions before it keep their placement and partitioning.
#[test]
fn versions_record_their_placement_and_repartition_rewrites_it() {
    let mem = MemoryBackend::new();
    let store = new_store(Arc::new(mem.clone()), 5);
    let schema = ArraySchema::matrix(12, 12, 3, 3).unwrap();
    let hash = Partitioning::Hash { shards: 3 };
    store
        .create_array("m", schema.clone(), Some(hash), None)
        .unwrap();
    store
        .create_array(
            "rows",
            schema.clone(),
            Some(Partitioning::RowBlock { shards: 2 }),
            None,
        )
        .unwrap();
    let current = Some(HASH_PLACEMENT.to_string());
    assert_eq!(store.array("m").unwrap().placement, current);
    assert_eq!(store.array("rows").unwrap().placement, None);
    write_all(&store, "rows", 2).unwrap();
    assert_eq!(store.array("rows").unwrap().placement, None);

    // Version 1: placed by block row, recorded as such.
    let other = Placement::new("test-by-block-row", by_block_row).unwrap();
    let mut w = store.writer("m", WriteMode::Replace).unwrap();
    w.place_with(other.clone()).unwrap();
    for k in keys(&schema) {
        w.put_block(k.clone(), block_for(&schema, &k, 2)).unwrap();
    }
    assert!(w.place_with(Placement::current()).is_err(), "after a put");
    w.commit().unwrap();
    assert_eq!(
        store.array("m").unwrap().placement.as_deref(),
        Some("test-by-block-row")
    );
    let placed = shards_of(&store, "m", None);
    assert!(
        placed
            .iter()
            .all(|(k, s)| *s == other.shard_of(k, 3) && *s == k.0[0] as u32 % 3)
    );
    assert!(
        placed.iter().any(|(k, s)| *s != hash.shard_of(k, &[4, 4])),
        "the test placement must differ from this build's somewhere"
    );
    let row_writer = store.writer("rows", WriteMode::Update);
    assert!(row_writer.unwrap().place_with(other.clone()).is_err());

    // Version 2: one block rewritten by this build, the rest kept: a mix.
    let mut w = store.writer("m", WriteMode::Update).unwrap();
    let k = BlockKey::matrix(1, 1);
    w.put_block(k.clone(), block_for(&schema, &k, 4)).unwrap();
    w.commit().unwrap();
    assert_eq!(
        store.array("m").unwrap().placement.as_deref(),
        Some(MIXED_PLACEMENT)
    );

    // Version 3: rewritten whole, with 4 shards, by this build.
    let v3 = store
        .repartition("m", Some(Partitioning::Hash { shards: 4 }))
        .unwrap();
    assert_eq!(v3, 3);
    let info = store.array("m").unwrap();
    assert_eq!(info.placement, current);
    assert_eq!(info.partitioning, Partitioning::Hash { shards: 4 });
    for (k, s) in shards_of(&store, "m", None) {
        assert_eq!(s, Partitioning::Hash { shards: 4 }.shard_of(&k, &[4, 4]));
    }
    let snap = store.snapshot("m", None).unwrap();
    for k in keys(&schema) {
        let seed = if k == BlockKey::matrix(1, 1) { 4 } else { 2 };
        assert!(
            snap.read_block(&k)
                .unwrap()
                .unwrap()
                .same_cells(&block_for(&schema, &k, seed))
        );
    }
    // The versions before keep what they were stored with, also after a reopen.
    drop(snap);
    drop(store);
    let store = new_store(Arc::new(mem.clone()), 5);
    for (version, placement) in [(1, "test-by-block-row"), (2, MIXED_PLACEMENT)] {
        let old = store.snapshot("m", Some(version)).unwrap();
        assert_eq!(old.info().placement.as_deref(), Some(placement));
        assert_eq!(old.info().partitioning, hash);
    }
    assert_version(&store, "m", Some(1), 2);
    assert_eq!(
        store.snapshot("m", None).unwrap().info().partitioning,
        Partitioning::Hash { shards: 4 }
    );

    // A rewrite that keeps the shard count; a row-block array keeps its layout.
    store.repartition("m", None).unwrap();
    assert_eq!(
        store.array("m").unwrap().partitioning,
        Partitioning::Hash { shards: 4 }
    );
    let rows = store.repartition("rows", None).unwrap();
    assert_eq!(rows, 2);
    assert_version(&store, "rows", None, 2);
    assert!(
        store
            .repartition("rows", Some(Partitioning::Hash { shards: 0 }))
            .is_err()
    );
    let mut w = store.writer("m", WriteMode::Update).unwrap();
    assert!(w.repartition(Partitioning::Hash { shards: 2 }).is_err());
}

/// A catalog written before placements were recorded has no `placement` field: its
/// hash-partitioned arrays read as placed by [`UNRECORDED_PLACEMENT`], DataFusion 55's
/// hash over foldhash 0.2 with seed 0, which this build's writes also use.
#[test]
fn a_catalog_without_placements_reads_as_the_unrecorded_placement() {
    let mem = MemoryBackend::new();
    let store = new_store(Arc::new(mem.clone()), 5);
    let schema = ArraySchema::matrix(6, 6, 3, 3).unwrap();
    store
        .create_array("m", schema, Some(Partitioning::Hash { shards: 2 }), None)
        .unwrap();
    write_all(&store, "m", 2).unwrap();
    drop(store);

    let bytes = mem.read(CATALOG_FILE).unwrap();
    let mut json: serde_json::Value = super::format::decode_json(CATALOG_FILE, &bytes).unwrap();
    let mut removed = 0;
    for version in json["arrays"]["m"]["versions"].as_array_mut().unwrap() {
        let fields = version.as_object_mut().unwrap();
        removed += usize::from(fields.remove("placement").is_some());
    }
    assert_eq!(removed, 2, "versions 0 and 1 record their placement");
    mem.write(CATALOG_FILE, &super::format::encode_json(&json).unwrap())
        .unwrap();

    let store = new_store(Arc::new(mem.clone()), 5);
    assert_eq!(UNRECORDED_PLACEMENT, HASH_PLACEMENT);
    let info = store.array("m").unwrap();
    assert_eq!(info.placement.as_deref(), Some(UNRECORDED_PLACEMENT));
    assert_version(&store, "m", None, 2);
    // The next write records it.
    write_all(&store, "m", 3).unwrap();
    let bytes = mem.read(CATALOG_FILE).unwrap();
    let json: serde_json::Value = super::format::decode_json(CATALOG_FILE, &bytes).unwrap();
    let versions = json["arrays"]["m"]["versions"].as_array().unwrap();
    assert!(versions[0].get("placement").is_none());
    assert_eq!(versions[2]["placement"], HASH_PLACEMENT);
}

/// A write in parts: other writers (workers, in a distributed `CREATE MATRIX ... AS`)
/// store blocks in files of their own, the write that adopts them commits them at
/// once; a part never adopted (a worker lost while writing) is deleted with the
/// commit, and a write that ends without a commit takes every part with it.
#[test]
fn parts_written_elsewhere_commit_with_the_write_that_adopts_them() {
    let schema = ArraySchema::matrix(9, 9, 3, 3).unwrap();
    let mem = MemoryBackend::new();
    let store = new_store(Arc::new(mem.clone()), 5);
    let part = |target: &crate::PartTarget, tag: &str, rows: &[i64], seed: u64| {
        let mut p = store.part_writer(target, tag).unwrap();
        for k in keys(&schema).into_iter().filter(|k| rows.contains(&k.0[0])) {
            p.put_block(k.clone(), block_for(&schema, &k, seed))
                .unwrap();
        }
        p
    };

    let mut w = store
        .create_array_writer("parted", schema.clone(), None, None, None)
        .unwrap();
    let target = w.part_target();
    let first = part(&target, "w1-0", &[0], 2).finish_part().unwrap();
    let second = part(&target, "w2-0", &[1, 2], 2).finish_part().unwrap();
    assert_eq!((first.blocks(), second.blocks()), (3, 6));
    // A worker killed mid-write: its file stays behind, never adopted.
    let mut lost = part(&target, "w3-0", &[0, 1], 7);
    lost.sync_written().unwrap();
    std::mem::forget(lost);
    // A part whose file lies outside the write, and a block put twice, are refused.
    let json = serde_json::to_string(&first).unwrap();
    let elsewhere: crate::WrittenPart =
        serde_json::from_str(&json.replace("/part-w1-0", "/../part-w1-0")).unwrap();
    assert!(
        matches!(w.adopt(elsewhere), Err(StorageError::InvalidArgument(m)) if m.contains("not a part of this write"))
    );
    w.adopt(first.clone()).unwrap();
    assert!(
        matches!(w.adopt(first), Err(StorageError::InvalidArgument(m)) if m.contains("written twice"))
    );
    w.adopt(second).unwrap();
    assert!(store.array("parted").is_err(), "visible before its commit");
    assert_eq!(w.commit().unwrap(), 1);
    assert_version(&store, "parted", None, 2);
    let files = mem.list("arrays/").unwrap();
    assert!(
        files.iter().any(|f| f.contains("/part-w1-0-shard-")),
        "{files:?}"
    );
    assert!(
        !files.iter().any(|f| f.contains("part-w3-0")),
        "the lost part stayed: {files:?}"
    );
    // The version survives a crash and a reopen, with the same files.
    mem.crash();
    let store = new_store(Arc::new(mem.clone()), 5);
    assert_version(&store, "parted", None, 2);
    assert_eq!(mem.list("arrays/").unwrap(), files);

    // A write that fails after parts were written leaves nothing, adopted or not.
    let mut w = store
        .create_array_writer("failed", schema.clone(), None, None, None)
        .unwrap();
    let target = w.part_target();
    let mut p = store.part_writer(&target, "w1-1").unwrap();
    p.put_block(
        BlockKey::matrix(0, 0),
        block_for(&schema, &BlockKey::matrix(0, 0), 2),
    )
    .unwrap();
    w.adopt(p.finish_part().unwrap()).unwrap();
    let mut p = store.part_writer(&target, "w2-1").unwrap();
    p.put_block(
        BlockKey::matrix(1, 1),
        block_for(&schema, &BlockKey::matrix(1, 1), 2),
    )
    .unwrap();
    p.sync_written().unwrap();
    std::mem::forget(p);
    drop(w);
    assert!(store.array("failed").is_err());
    assert_eq!(mem.list("arrays/").unwrap(), files);

    // A part refuses a placement its build does not have, and odd tags; a part is
    // finished, never committed, and a write commits, never finishes as a part.
    let mut w = store
        .create_array_writer("odd", schema.clone(), None, None, None)
        .unwrap();
    let mut other = w.part_target();
    other.placement = "elsewhere-v9".into();
    assert!(
        matches!(store.part_writer(&other, "t"), Err(StorageError::InvalidArgument(m)) if m.contains("elsewhere-v9"))
    );
    let target = w.part_target();
    assert!(store.part_writer(&target, "../x").is_err());
    assert!(store.part_writer(&target, "t").unwrap().commit().is_err());
    w.put_block(
        BlockKey::matrix(0, 0),
        block_for(&schema, &BlockKey::matrix(0, 0), 2),
    )
    .unwrap();
    assert!(w.finish_part().is_err());
}
