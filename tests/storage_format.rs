//! The on-disk format is a contract (docs/format.md): a data directory written by
//! format version 1 is kept in `tests/fixtures/format-v1` and must always read back.

use std::path::{Path, PathBuf};

use tessera_storage::{
    ArraySchema, Attribute, Block, BlockFormat, BlockKey, CsrBlock, DenseBlock, Dimension,
    Partitioning, Store, UNRECORDED_PLACEMENT, WriteMode,
};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/format-v1")
}

/// `dense`: 5x4 in 2x3 blocks, cell (i, j) = 10 i + j + 0.5.
fn dense_cell(i: u64, j: u64) -> f64 {
    (10 * i + j) as f64 + 0.5
}

/// `sparse`: 6x6 in 3x3 blocks, the diagonal i + 1 and (0, 5) = -2.
fn sparse_cell(i: u64, j: u64) -> f64 {
    match (i, j) {
        (0, 5) => -2.0,
        _ if i == j => (i + 1) as f64,
        _ => 0.0,
    }
}

/// `cube`: a 3-d array (x 0:3 BLOCK 2, y 0:1 BLOCK 2, z -1:1 BLOCK 3), t = x*100+y*10+z.
fn cube_schema() -> ArraySchema {
    ArraySchema::new(
        vec![
            Dimension::new("x", 0, 3, 2),
            Dimension::new("y", 0, 1, 2),
            Dimension::new("z", -1, 1, 3),
        ],
        vec![Attribute::double("t")],
    )
    .unwrap()
}

fn matrix_block(schema: &ArraySchema, key: &BlockKey, cell: fn(u64, u64) -> f64) -> Block {
    let d = schema.dimensions();
    let (r0, c0) = (
        key.0[0] as u64 * d[0].block_len,
        key.0[1] as u64 * d[1].block_len,
    );
    let (rows, cols) = schema.block_shape(key);
    Block::Dense(DenseBlock::from_fn(rows, cols, |r, c| {
        cell(r0 + r as u64, c0 + c as u64)
    }))
    .into_preferred_format()
}

fn cube_block(key: &BlockKey) -> Block {
    let s = cube_schema();
    let (rows, cols) = s.block_shape(key);
    // rows flatten (x, y) within the block; cols are z.
    let ylen = s.dimensions()[1].block_extent(key.0[1] as u64) as usize;
    Block::Dense(DenseBlock::from_fn(rows, cols, |r, c| {
        let x = key.0[0] * 2 + (r / ylen) as i64;
        let y = (r % ylen) as i64;
        let z = c as i64 - 1;
        (x * 100 + y * 10 + z) as f64
    }))
}

fn keys(schema: &ArraySchema) -> Vec<BlockKey> {
    let g = schema.block_grid();
    let mut out = vec![vec![]];
    for n in g {
        out = out
            .into_iter()
            .flat_map(|k| (0..n as i64).map(move |b| [k.clone(), vec![b]].concat()))
            .collect();
    }
    out.into_iter().map(BlockKey).collect()
}

/// Writes the fixture. Run once, by hand, when a format version is introduced:
/// `cargo test -p tessera-tests --test main -- --ignored write_format_v1_fixture`
#[test]
#[ignore = "writes tests/fixtures/format-v1; run by hand only for a new format version"]
fn write_format_v1_fixture() {
    let dir = fixture_dir();
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open_dir(&dir).unwrap();
    let dense = ArraySchema::matrix(5, 4, 2, 3).unwrap();
    store
        .create_array(
            "dense",
            dense.clone(),
            Some(Partitioning::Hash { shards: 2 }),
            None,
        )
        .unwrap();
    // Version 1: zeros in (0, 0); version 2 fills every block (so both versions stay).
    let mut w = store.writer("dense", WriteMode::Replace).unwrap();
    w.put_block(
        BlockKey::matrix(1, 1),
        matrix_block(&dense, &BlockKey::matrix(1, 1), dense_cell),
    )
    .unwrap();
    w.commit().unwrap();
    let mut w = store.writer("dense", WriteMode::Update).unwrap();
    for k in keys(&dense) {
        if k != BlockKey::matrix(1, 1) {
            w.put_block(k.clone(), matrix_block(&dense, &k, dense_cell))
                .unwrap();
        }
    }
    w.commit().unwrap();

    let sparse = ArraySchema::matrix(6, 6, 3, 3).unwrap();
    store
        .create_array(
            "sparse",
            sparse.clone(),
            Some(Partitioning::RowBlock { shards: 2 }),
            None,
        )
        .unwrap();
    let mut w = store.writer("sparse", WriteMode::Replace).unwrap();
    for k in keys(&sparse) {
        w.put_block(k.clone(), matrix_block(&sparse, &k, sparse_cell))
            .unwrap();
    }
    w.commit().unwrap();

    store
        .create_array(
            "cube",
            cube_schema(),
            Some(Partitioning::Grid {
                row_shards: 2,
                col_shards: 1,
            }),
            None,
        )
        .unwrap();
    let mut w = store.writer("cube", WriteMode::Replace).unwrap();
    for k in keys(&cube_schema()) {
        w.put_block(k.clone(), cube_block(&k)).unwrap();
    }
    w.commit().unwrap();
    drop(store);
    std::fs::remove_file(dir.join("LOCK")).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn format_v1_fixture_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture_dir(), tmp.path());
    let store = Store::open_dir(tmp.path()).unwrap();
    let names: Vec<String> = store.arrays().into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["cube", "dense", "sparse"]);

    let dense = store.array("dense").unwrap();
    assert_eq!(dense.partitioning, Partitioning::Hash { shards: 2 });
    // Format-v1 catalogs record no placement: read as the one every build that wrote
    // them used, which is this build's live placement, so the array stays trusted; and
    // its blocks are indeed where this build's hash puts them.
    assert_eq!(dense.placement.as_deref(), Some(UNRECORDED_PLACEMENT));
    assert!(tessera_planner::hash_placement_is_live(&dense));
    let current = store.snapshot("dense", None).unwrap();
    let grid = dense.schema.block_grid();
    assert!(!current.blocks().is_empty());
    for b in current.blocks() {
        assert_eq!(
            b.shard,
            dense.partitioning.shard_of(&b.key, &grid),
            "{}",
            b.key
        );
    }
    drop(current);
    assert_eq!(
        dense.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    let v1 = store.snapshot("dense", Some(1)).unwrap();
    assert_eq!(v1.blocks().len(), 1);
    assert_eq!(v1.read_block(&BlockKey::matrix(0, 0)).unwrap(), None);
    let v2 = store.snapshot("dense", None).unwrap();
    for i in 0..5 {
        for j in 0..4 {
            let b = v2
                .read_block(&BlockKey::matrix(i / 2, j / 3))
                .unwrap()
                .unwrap();
            assert_eq!(
                b.get((i % 2) as usize, (j % 3) as usize),
                dense_cell(i as u64, j as u64)
            );
        }
    }

    let sparse = store.snapshot("sparse", None).unwrap();
    assert_eq!(sparse.nnz(), 7);
    let b = sparse.read_block(&BlockKey::matrix(0, 1)).unwrap().unwrap();
    assert_eq!(b.format(), BlockFormat::Csr);
    assert_eq!(b.get(0, 2), -2.0);
    let expect = CsrBlock::from_dense(&DenseBlock::from_fn(3, 3, |r, c| {
        sparse_cell(r as u64 + 3, c as u64 + 3)
    }));
    assert!(
        sparse
            .read_block(&BlockKey::matrix(1, 1))
            .unwrap()
            .unwrap()
            .same_cells(&Block::Sparse(expect))
    );

    let cube = store.snapshot("cube", None).unwrap();
    let b = cube.read_block(&BlockKey(vec![1, 0, 0])).unwrap().unwrap();
    assert_eq!(b.shape(), (4, 3));
    // x = 3, y = 1, z = 1 is row (1*2 + 1) = 3, column 2.
    assert_eq!(b.get(3, 2), 311.0);
}
