//! Loading files into stored matrices and exporting them, checked against NumPy and
//! SciPy: blocks that do not divide the shape, sparse and dense blocks, the spill path
//! for unordered files, update semantics, and bad files that must create nothing.

use std::path::Path;
use std::sync::Arc;

use tessera_storage::backend::ObjectStoreBackend;
use tessera_storage::io::FileFormat;
use tessera_storage::{
    ArraySchema, BlockFormat, BlockKey, LoadOptions, Partitioning, Store, StoreOptions, WriteMode,
};

use crate::python;

/// The whole matrix as dense rows, read back from the store.
fn dense_of(store: &Store, name: &str) -> Vec<Vec<f64>> {
    let snap = store.snapshot(name, None).unwrap();
    let schema = snap.info().schema.clone();
    let (rows, cols) = schema.shape2();
    let d = schema.dimensions();
    let mut out = vec![vec![0.0; cols as usize]; rows as usize];
    for (key, blocks) in snap.read_where(|_| true).unwrap() {
        let (r0, c0) = (
            key.0[0] as u64 * d[0].block_len,
            key.0[1] as u64 * d[1].block_len,
        );
        blocks[0].for_each_nonzero(|r, c, v| {
            out[(r0 + r as u64) as usize][(c0 + c as u64) as usize] = v
        });
    }
    out
}

/// Asserts two matrices are equal, naming the first cell that differs.
#[track_caller]
fn assert_same(got: &[Vec<f64>], want: &[Vec<f64>], what: &str) {
    assert_eq!(
        (got.len(), got.first().map_or(0, Vec::len)),
        (want.len(), want.first().map_or(0, Vec::len)),
        "{what}: shape"
    );
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        for (j, (a, b)) in g.iter().zip(w).enumerate() {
            assert!(a == b, "{what}: cell ({i}, {j}) is {a}, expected {b}");
        }
    }
}

fn parse_matrix(json: &str) -> Vec<Vec<f64>> {
    serde_json::from_str(json.trim()).unwrap()
}

#[test]
fn numpy_and_scipy_files_load_and_export_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    python::run(
        dir,
        "import numpy as np, scipy.sparse as sp, scipy.io as sio\n\
         rng = np.random.default_rng(7)\n\
         a = rng.standard_normal((37, 23)); np.save('a.npy', a)\n\
         np.save('af.npy', np.asfortranarray(a))\n\
         s = sp.random(41, 29, density=0.05, random_state=3, format='coo'); sio.mmwrite('s.mtx', s)\n",
    );
    let store = Store::open_dir(dir.join("data")).unwrap();
    // 37x23 in 10x7 blocks: the last block row and column are short.
    for (name, file) in [("a", "a.npy"), ("af", "af.npy")] {
        store
            .create_array(
                name,
                ArraySchema::matrix(37, 23, 10, 7).unwrap(),
                None,
                None,
            )
            .unwrap();
        let summary = store
            .load(
                name,
                &dir.join(file),
                FileFormat::Npy,
                &LoadOptions::default(),
            )
            .unwrap();
        assert_eq!(summary.cells, 37 * 23);
        assert_eq!(summary.blocks, 4 * 4);
    }
    let expected = parse_matrix(&python::run(
        dir,
        "import numpy as np, json; print(json.dumps(np.load('a.npy').tolist()))",
    ));
    assert_same(&dense_of(&store, "a"), &expected, "C-order npy");
    assert_same(&dense_of(&store, "af"), &expected, "Fortran-order npy");

    store
        .create_array(
            "s",
            ArraySchema::matrix(41, 29, 16, 16).unwrap(),
            Some(Partitioning::RowBlock { shards: 2 }),
            None,
        )
        .unwrap();
    store
        .load(
            "s",
            &dir.join("s.mtx"),
            FileFormat::MatrixMarket,
            &LoadOptions::default(),
        )
        .unwrap();
    let snap = store.snapshot("s", None).unwrap();
    assert!(
        snap.blocks()
            .iter()
            .all(|b| b.formats == [BlockFormat::Csr]),
        "5% dense blocks are stored sparse"
    );
    let expected = parse_matrix(&python::run(
        dir,
        "import scipy.io as sio, json; print(json.dumps(sio.mmread('s.mtx').toarray().tolist()))",
    ));
    assert_same(&dense_of(&store, "s"), &expected, "mtx");
    assert_eq!(
        snap.nnz(),
        expected.iter().flatten().filter(|v| **v != 0.0).count() as u64
    );

    // Export and let NumPy / SciPy read our files.
    store
        .export("a", None, &dir.join("out.npy"), FileFormat::Npy)
        .unwrap();
    store
        .export("s", None, &dir.join("out.mtx"), FileFormat::MatrixMarket)
        .unwrap();
    store
        .export("s", None, &dir.join("out.csv"), FileFormat::Csv)
        .unwrap();
    let verdict = python::run(
        dir,
        "import numpy as np, scipy.io as sio\n\
         a = np.load('a.npy'); b = np.load('out.npy')\n\
         s = sio.mmread('s.mtx').toarray(); t = sio.mmread('out.mtx').toarray()\n\
         c = np.zeros_like(s)\n\
         for i, j, v in np.loadtxt('out.csv', delimiter=',', skiprows=1, ndmin=2): c[int(i), int(j)] = v\n\
         print(b.shape == a.shape and (b == a).all(), (t == s).all(), (c == s).all())",
    );
    assert_eq!(verdict.trim(), "True True True");
}

#[test]
fn unordered_files_spill_and_load_the_same_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // 200x150 with about 9,000 non-zeros as shuffled i,j,v triples.
    python::run(
        dir,
        "import numpy as np\n\
         rng = np.random.default_rng(11)\n\
         m = np.where(rng.random((200, 150)) < 0.3, rng.standard_normal((200, 150)), 0.0)\n\
         i, j = np.nonzero(m); p = rng.permutation(len(i))\n\
         np.savetxt('t.csv', np.column_stack([i[p], j[p], m[i[p], j[p]]]), delimiter=',', fmt=['%d', '%d', '%.17g'], header='i,j,v', comments='')\n\
         np.save('m.npy', m)\n",
    );
    let store = Store::in_memory();
    let schema = ArraySchema::matrix(200, 150, 32, 32).unwrap();
    store
        .create_array("big", schema.clone(), None, None)
        .unwrap();
    store.create_array("small", schema, None, None).unwrap();
    let opts = |budget| LoadOptions {
        memory_budget: budget,
        ..LoadOptions::default()
    };
    store
        .load("big", &dir.join("t.csv"), FileFormat::Csv, &opts(1 << 30))
        .unwrap();
    // 16 KiB holds about a thousand cells: the load spills to per-band bucket files.
    store
        .load(
            "small",
            &dir.join("t.csv"),
            FileFormat::Csv,
            &opts(16 << 10),
        )
        .unwrap();
    let expected = parse_matrix(&python::run(
        dir,
        "import numpy as np, json; print(json.dumps(np.load('m.npy').tolist()))",
    ));
    assert_same(&dense_of(&store, "big"), &expected, "in memory");
    assert_same(&dense_of(&store, "small"), &expected, "spilled");
    let (a, b) = (
        store.snapshot("big", None).unwrap(),
        store.snapshot("small", None).unwrap(),
    );
    assert_eq!(a.blocks(), b.blocks());
}

#[test]
fn loads_update_cells_and_replace_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("one.csv"), "i,j,v\n0,0,1\n1,1,2\n5,5,3\n").unwrap();
    std::fs::write(dir.join("two.csv"), "i,j,v\n1,1,20\n4,0,7\n4,0,0.5\n").unwrap();
    let store = Store::in_memory();
    store
        .create_array("m", ArraySchema::matrix(6, 6, 4, 4).unwrap(), None, None)
        .unwrap();
    store
        .load(
            "m",
            &dir.join("one.csv"),
            FileFormat::Csv,
            &LoadOptions::default(),
        )
        .unwrap();
    store
        .load(
            "m",
            &dir.join("two.csv"),
            FileFormat::Csv,
            &LoadOptions::default(),
        )
        .unwrap();
    let m = dense_of(&store, "m");
    // (1,1) overwritten; (4,0) written twice in one file: summed; others kept.
    assert_eq!((m[0][0], m[1][1], m[5][5], m[4][0]), (1.0, 20.0, 3.0, 7.5));
    let replace = LoadOptions {
        mode: WriteMode::Replace,
        ..LoadOptions::default()
    };
    store
        .load("m", &dir.join("one.csv"), FileFormat::Csv, &replace)
        .unwrap();
    let m = dense_of(&store, "m");
    assert_eq!((m[0][0], m[1][1], m[4][0]), (1.0, 2.0, 0.0));
    assert_eq!(store.array("m").unwrap().current().version, 3);
}

#[test]
fn bad_files_create_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    let store = Store::open_dir(&data).unwrap();
    store
        .create_array("m", ArraySchema::matrix(4, 3, 2, 2).unwrap(), None, None)
        .unwrap();
    std::fs::write(dir.join("good.csv"), "1,2,3\n4,5,6\n7,8,9\n10,11,12\n").unwrap();
    store
        .load(
            "m",
            &dir.join("good.csv"),
            FileFormat::Csv,
            &LoadOptions::default(),
        )
        .unwrap();
    let files_before = list_files(&data);

    let cases: [(&str, &str, FileFormat, &str); 5] = [
        ("ragged.csv", "1,2,3\n4,5\n", FileFormat::Csv, ":2"),
        ("number.csv", "1,2,3\n4,x5,6\n", FileFormat::Csv, ":2"),
        ("range.csv", "i,j,v\n0,0,1\n3,3,1\n", FileFormat::Csv, ":3"),
        (
            "banner.mtx",
            "%%MatrixMarket matrix coordinate real generl\n4 3 1\n1 1 1\n",
            FileFormat::MatrixMarket,
            ":1",
        ),
        (
            "short.mtx",
            "%%MatrixMarket matrix coordinate real general\n4 3 3\n1 1 1\n2 2 2\n",
            FileFormat::MatrixMarket,
            "declares 3",
        ),
    ];
    for (file, text, format, place) in cases {
        let path = dir.join(file);
        std::fs::write(&path, text).unwrap();
        let err = store
            .load("m", &path, format, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(file) && err.contains(place), "{file}: {err}");
        assert_eq!(store.array("m").unwrap().current().version, 1, "{file}");
        assert_eq!(list_files(&data), files_before, "{file} left files behind");
    }
    let err = store
        .load(
            "m",
            &dir.join("missing.npy"),
            FileFormat::Npy,
            &LoadOptions::default(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("missing.npy"), "{err}");
    assert_eq!(dense_of(&store, "m")[3], vec![10.0, 11.0, 12.0]);
}

fn list_files(dir: &Path) -> Vec<String> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn object_store_backend_holds_a_store() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = || Arc::new(ObjectStoreBackend::local(&tmp.path().join("bucket")).unwrap());
    let store = Store::open(backend(), StoreOptions { keep_versions: 2 }).unwrap();
    let schema = ArraySchema::matrix(30, 20, 8, 8).unwrap();
    store.create_array("m", schema.clone(), None, None).unwrap();
    for round in 1..=3u64 {
        let mut w = store.writer("m", WriteMode::Replace).unwrap();
        for bi in 0..4 {
            for bj in 0..3 {
                let k = BlockKey::matrix(bi, bj);
                let (r, c) = schema.block_shape(&k);
                let b = tessera_storage::DenseBlock::from_fn(r, c, |i, j| {
                    (round * 1000) as f64 + (i * c + j) as f64
                });
                w.put_block(k, tessera_storage::Block::Dense(b)).unwrap();
            }
        }
        assert_eq!(w.commit().unwrap(), round);
    }
    drop(store);
    let store = Store::open(backend(), StoreOptions::default()).unwrap();
    let info = store.array("m").unwrap();
    assert_eq!(
        info.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [2, 3]
    );
    let b = store
        .snapshot("m", Some(2))
        .unwrap()
        .read_block(&BlockKey::matrix(3, 2))
        .unwrap()
        .unwrap();
    assert_eq!(b.shape(), (6, 4));
    assert_eq!(b.get(5, 3), 2000.0 + 23.0);
    // Version 1's files are gone from the bucket.
    assert!(store.backend().list("arrays/1/v1/").unwrap().is_empty());
}
