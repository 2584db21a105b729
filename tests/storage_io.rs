//! File ingest and export, checked against NumPy and SciPy.
//!
//! NumPy and SciPy write files that Tessera reads, and read files that Tessera writes;
//! either way Python prints the non-zeros it sees (`r c repr(v)`, parsed back exactly
//! with Rust's `f64` parser) and the test compares them with Tessera's.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

use tessera_storage::io::{
    BlockBand, CELL_BATCH, FileFormat, ReadOptions, open_reader, write_file,
};
use tessera_storage::{Block, CsrBlock, DenseBlock};

use crate::python;

/// The non-zeros of a matrix by `(row, col)`, and its shape.
#[derive(Debug, Clone, PartialEq)]
struct Matrix {
    shape: (u64, u64),
    cells: BTreeMap<(u64, u64), f64>,
}

/// Prints every array handed to `dump` as `== name rows cols` and `r c repr(v)` lines.
const PY_PRELUDE: &str = r#"
import numpy as np, scipy.io, scipy.sparse as sp
def dump(name, a):
    a = a.toarray() if hasattr(a, 'toarray') else np.asarray(a)
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a.reshape(-1, 1)
    print('==', name, a.shape[0], a.shape[1])
    for r, c in zip(*np.nonzero(a)):
        print(r, c, repr(float(a[r, c])))
"#;

/// Runs `script` after the prelude in `dir` and parses what it dumped.
fn python_matrices(dir: &Path, script: &str) -> BTreeMap<String, Matrix> {
    let out = python::run(dir, &format!("{PY_PRELUDE}\n{script}"));
    let mut matrices = BTreeMap::new();
    let mut current: Option<(String, Matrix)> = None;
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"==") {
            matrices.extend(current.take());
            let shape = (words[2].parse().unwrap(), words[3].parse().unwrap());
            current = Some((
                words[1].to_string(),
                Matrix {
                    shape,
                    cells: BTreeMap::new(),
                },
            ));
        } else {
            let (_, m) = current.as_mut().expect("a dump header comes first");
            let key = (words[0].parse().unwrap(), words[1].parse().unwrap());
            m.cells.insert(key, words[2].parse::<f64>().unwrap());
        }
    }
    matrices.extend(current);
    matrices
}

/// Reads a file with Tessera, batch by batch, summing duplicate cells. Also returns
/// whether the reader said its cells are in row order, after checking that they are.
fn tessera_read(path: &Path, format: FileFormat, options: &ReadOptions) -> (Matrix, bool) {
    let mut reader = open_reader(path, format, options)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let ordered = reader.row_ordered();
    let declared = reader.declared_shape();
    let mut cells = BTreeMap::new();
    let mut last_row = 0;
    while let Some(batch) = reader.next_cells().unwrap() {
        assert!(batch.len() <= CELL_BATCH);
        for ((&r, &c), &v) in batch.rows.iter().zip(&batch.cols).zip(&batch.values) {
            assert_ne!(v, 0.0, "readers yield non-zeros only");
            assert!(
                !ordered || r >= last_row,
                "{}: row {r} after row {last_row}",
                path.display()
            );
            last_row = r;
            *cells.entry((r, c)).or_insert(0.0) += v;
        }
    }
    cells.retain(|_, v| *v != 0.0);
    let shape = reader.final_shape().expect("the shape is known at the end");
    if let Some(declared) = declared {
        assert_eq!(declared, shape);
    }
    (Matrix { shape, cells }, ordered)
}

/// Asserts `got` and `want` hold the same cells: equal bits (NaN matching NaN) when
/// `rel_tol` is 0, else within a relative tolerance.
fn assert_same(name: &str, got: &Matrix, want: &Matrix, rel_tol: f64) {
    assert_eq!(got.shape, want.shape, "{name}: shape");
    let got_keys: Vec<_> = got.cells.keys().collect();
    let want_keys: Vec<_> = want.cells.keys().collect();
    assert_eq!(got_keys, want_keys, "{name}: non-zero positions");
    for ((key, &g), &w) in got.cells.iter().zip(want.cells.values()) {
        let same = if g.is_nan() || w.is_nan() {
            g.is_nan() && w.is_nan()
        } else if rel_tol == 0.0 || g.is_infinite() || w.is_infinite() {
            g.to_bits() == w.to_bits()
        } else {
            (g - w).abs() <= rel_tol * g.abs().max(w.abs())
        };
        assert!(same, "{name}: cell {key:?} is {g:e}, reference {w:e}");
    }
}

#[test]
fn npy_files_written_by_numpy_load_as_numpy_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let reference = python_matrices(
        dir.path(),
        r#"
rng = np.random.default_rng(7)
a = rng.standard_normal((37, 23))
a[rng.random(a.shape) < 0.3] = 0
a[0, 0], a[1, 1], a[2, 2], a[3, 3], a[4, 4] = 1e-300, -2.5e300, np.nan, np.inf, 1 / 3
n = rng.integers(-2**40, 2**40, (11, 13))
n[rng.random(n.shape) < 0.3] = 0
small = rng.integers(0, 3, (6, 4))
arrays = {
    'c_f8': a,
    'f_f8': np.asfortranarray(a),
    'be_f8': a.astype('>f8'),
    'c_f4': a.astype(np.float32),
    'f_f4': np.asfortranarray(a.astype(np.float32)),
    'c_i8': n,
    'f_i8': np.asfortranarray(n),
    'c_i4': (n // 2**20).astype(np.int32),
    'c_u1': small.astype(np.uint8),
    'c_b1': small.astype(bool),
    'vec': a[:, 1].copy(),
    'vec_i8': n[:, 0].copy(),
    'empty': np.zeros((0, 3)),
}
for name, x in arrays.items():
    np.save(name + '.npy', x)
for version in [(2, 0), (3, 0)]:
    with open('v%d.npy' % version[0], 'wb') as f:
        np.lib.format.write_array(f, np.asfortranarray(a), version=version)
for name in list(arrays) + ['v2', 'v3']:
    dump(name, np.load(name + '.npy'))
"#,
    );
    assert_eq!(reference.len(), 15);
    for (name, want) in &reference {
        let path = dir.path().join(format!("{name}.npy"));
        let (got, ordered) = tessera_read(&path, FileFormat::Npy, &ReadOptions::default());
        assert_same(name, &got, want, 0.0);
        let fortran = name.starts_with("f_") || (name.starts_with('v') && !name.starts_with("vec"));
        assert_eq!(ordered, !fortran, "{name}: row order");
        // With the matching target shape the file loads the same.
        let options = ReadOptions {
            target_shape: Some(want.shape),
            ..ReadOptions::default()
        };
        assert_same(
            name,
            &tessera_read(&path, FileFormat::Npy, &options).0,
            want,
            0.0,
        );
    }
}

#[test]
fn matrix_market_files_written_by_scipy_load_as_scipy_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let reference = python_matrices(
        dir.path(),
        r#"
rng = np.random.default_rng(11)
g = sp.random(40, 30, density=0.1, format='coo', random_state=3)
s = sp.random(25, 25, density=0.1, random_state=4); s = (s + s.T).tocoo()
k = sp.random(20, 20, density=0.1, random_state=5); k = (k - k.T).tocoo()
i = sp.random(15, 12, density=0.2, random_state=6, data_rvs=lambda n: rng.integers(-1000, 1000, n)).astype(np.int64)
si = sp.random(9, 9, density=0.3, random_state=8, data_rvs=lambda n: rng.integers(1, 9, n)).astype(np.int64); si = si + si.T
p = sp.random(17, 19, density=0.15, random_state=9)
d = rng.standard_normal((9, 7)); d[d < -0.8] = 0
x = rng.standard_normal((6, 6)); ds = x + x.T
scipy.io.mmwrite('general.mtx', g)
scipy.io.mmwrite('symmetric.mtx', s, symmetry='symmetric')
scipy.io.mmwrite('skew.mtx', k, symmetry='skew-symmetric')
scipy.io.mmwrite('integer.mtx', i)
scipy.io.mmwrite('integer_symmetric.mtx', si, symmetry='symmetric')
scipy.io.mmwrite('pattern.mtx', p, field='pattern')
scipy.io.mmwrite('dense.mtx', d)
scipy.io.mmwrite('dense_symmetric.mtx', ds, symmetry='symmetric')
for name in ['general', 'symmetric', 'skew', 'integer', 'integer_symmetric', 'pattern', 'dense', 'dense_symmetric']:
    dump(name, scipy.io.mmread(name + '.mtx'))
"#,
    );
    assert_eq!(reference.len(), 8);
    // SciPy wrote what the test asked for (so every branch of the reader is exercised).
    let banner = |name: &str| {
        let text = std::fs::read_to_string(dir.path().join(format!("{name}.mtx"))).unwrap();
        text.lines().next().unwrap().to_string()
    };
    assert_eq!(
        banner("skew"),
        "%%MatrixMarket matrix coordinate real skew-symmetric"
    );
    assert_eq!(
        banner("integer_symmetric"),
        "%%MatrixMarket matrix coordinate integer symmetric"
    );
    assert_eq!(
        banner("pattern"),
        "%%MatrixMarket matrix coordinate pattern general"
    );
    assert_eq!(
        banner("dense_symmetric"),
        "%%MatrixMarket matrix array real symmetric"
    );
    for (name, want) in &reference {
        let path = dir.path().join(format!("{name}.mtx"));
        let (got, _) = tessera_read(&path, FileFormat::MatrixMarket, &ReadOptions::default());
        assert!(!want.cells.is_empty(), "{name}");
        assert_same(name, &got, want, 1e-15);
    }
}

#[test]
fn csv_files_written_by_numpy_load_as_numpy_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let reference = python_matrices(
        dir.path(),
        r#"
rng = np.random.default_rng(5)
x = rng.standard_normal((12, 5)); x[x < -0.5] = 0; x[0, 0] = 1e-300
w3 = rng.standard_normal((8, 3)); w3[0, 1] = 0
np.savetxt('plain.csv', x, delimiter=',')
np.savetxt('header.csv', x, delimiter=',', header='a,b,c,d,e', comments='')
np.savetxt('width3.csv', w3, delimiter=',')
r, c = np.nonzero(x)
np.savetxt('triples.csv', np.column_stack([r, c, x[r, c]]), delimiter=',', header='i,j,v', comments='', fmt=['%d', '%d', '%.17g'])
dump('plain', np.loadtxt('plain.csv', delimiter=','))
dump('header', np.loadtxt('header.csv', delimiter=',', skiprows=1))
dump('width3', np.loadtxt('width3.csv', delimiter=','))
dump('triples', x)
"#,
    );
    assert_eq!(reference.len(), 4);
    let read = |name: &str, target: Option<(u64, u64)>| {
        let path = dir.path().join(format!("{name}.csv"));
        let options = ReadOptions {
            target_shape: target,
            ..ReadOptions::default()
        };
        tessera_read(&path, FileFormat::Csv, &options)
    };
    for name in ["plain", "header", "width3"] {
        let (got, ordered) = read(name, None);
        assert!(ordered, "{name}: dense rows are row-ordered");
        assert_same(name, &got, &reference[name], 1e-15);
        assert_same(
            name,
            &read(name, Some(reference[name].shape)).0,
            &reference[name],
            1e-15,
        );
    }
    // Triples: by the header without a target, by the header with one.
    let want = &reference["triples"];
    let (got, ordered) = read("triples", Some(want.shape));
    assert!(!ordered);
    assert_same("triples", &got, want, 1e-15);
    // Without a target the shape ends at the last non-zero row and column.
    let (got, _) = read("triples", None);
    assert!(got.shape.0 <= want.shape.0 && got.shape.1 <= want.shape.1);
    assert_same(
        "triples",
        &Matrix {
            shape: want.shape,
            ..got
        },
        want,
        1e-15,
    );
}

/// A `rows x cols` matrix cut into bands of `band_rows` and blocks of `block_cols`:
/// pseudo-random cells at about `percent`% density, a few awkward values, blocks
/// alternating dense and CSR, and all-zero blocks left out.
fn generated(
    rows: u64,
    cols: u64,
    band_rows: usize,
    block_cols: usize,
    percent: u64,
) -> (Vec<BlockBand>, Matrix) {
    let value = |r: u64, c: u64| -> f64 {
        match (r, c) {
            (0, 0) => return 1.0 / 3.0,
            (1, 2) => return 1e-300,
            (2, 1) => return -2.5e300,
            (3, 3) => return f64::NAN,
            (4, 4) => return f64::NEG_INFINITY,
            _ => {}
        }
        let mut h = (r * 1_000_003 + c * 7919 + 12345).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^= h >> 29;
        if h % 100 >= percent {
            return 0.0;
        }
        ((h >> 16) % 20_001) as f64 / 7.0 - 1428.0 - 0.5
    };
    let mut cells = BTreeMap::new();
    let mut bands = vec![];
    for (b, row0) in (0..rows).step_by(band_rows).enumerate() {
        let h = band_rows.min((rows - row0) as usize);
        let mut blocks = vec![];
        for (bc, col0) in (0..cols).step_by(block_cols).enumerate() {
            let w = block_cols.min((cols - col0) as usize);
            let d = DenseBlock::from_fn(h, w, |r, c| value(row0 + r as u64, col0 + c as u64));
            if d.nnz() == 0 {
                continue;
            }
            Block::Dense(d.clone()).for_each_nonzero(|r, c, v| {
                cells.insert((row0 + r as u64, col0 + c as u64), v);
            });
            let block = if (b + bc) % 2 == 0 {
                Block::Sparse(CsrBlock::from_dense(&d))
            } else {
                Block::Dense(d)
            };
            blocks.push((col0, block));
        }
        bands.push(BlockBand {
            row0,
            rows: h,
            blocks,
        });
    }
    (
        bands,
        Matrix {
            shape: (rows, cols),
            cells,
        },
    )
}

#[test]
fn files_written_by_tessera_load_in_numpy_and_scipy() {
    let dir = tempfile::tempdir().unwrap();
    let (dense_bands, dense) = generated(23, 17, 8, 6, 70);
    let (sparse_bands, sparse) = generated(29, 31, 10, 7, 8);
    // The last cell of `sparse` is zero: the triples file must still say the shape.
    assert!(!sparse.cells.contains_key(&(28, 30)));
    let write = |name: &str, format, bands: &[BlockBand], m: &Matrix| {
        let path = dir.path().join(name);
        let nnz = m.cells.len() as u64;
        write_file(
            &path,
            format,
            m.shape,
            nnz,
            &mut bands.iter().cloned().map(Ok),
        )
        .unwrap();
        std::fs::read_to_string(&path).unwrap_or_default()
    };
    write("dense.npy", FileFormat::Npy, &dense_bands, &dense);
    write("sparse.npy", FileFormat::Npy, &sparse_bands, &sparse);
    let text = write("dense.mtx", FileFormat::MatrixMarket, &dense_bands, &dense);
    assert!(text.starts_with("%%MatrixMarket matrix array real general\n"));
    let text = write(
        "sparse.mtx",
        FileFormat::MatrixMarket,
        &sparse_bands,
        &sparse,
    );
    assert!(text.starts_with("%%MatrixMarket matrix coordinate real general\n"));
    let text = write("dense.csv", FileFormat::Csv, &dense_bands, &dense);
    assert!(text.starts_with("0.3333333333333333,"));
    let text = write("sparse.csv", FileFormat::Csv, &sparse_bands, &sparse);
    assert!(text.starts_with("i,j,v\n0,0,0.3333333333333333\n"));

    let reference = python_matrices(
        dir.path(),
        r#"
import os
for name in ['dense', 'sparse']:
    a = np.load(name + '.npy')
    assert a.dtype == np.float64 and a.flags['C_CONTIGUOUS'] and a.ndim == 2
    dump(name + '.npy', a)
    dump(name + '.mtx', scipy.io.mmread(name + '.mtx'))
dump('dense.csv', np.loadtxt('dense.csv', delimiter=',', ndmin=2))
t = np.loadtxt('sparse.csv', delimiter=',', skiprows=1, ndmin=2)
r, c = t[:, 0].astype(np.int64), t[:, 1].astype(np.int64)
s = np.zeros((r.max() + 1, c.max() + 1))
np.add.at(s, (r, c), t[:, 2])
dump('sparse.csv', s)
assert sorted(os.listdir('.')) == sorted(['dense.npy', 'sparse.npy', 'dense.mtx', 'sparse.mtx', 'dense.csv', 'sparse.csv'])
"#,
    );
    assert_eq!(reference.len(), 6);
    for (name, want) in &reference {
        let m = if name.starts_with("dense") {
            &dense
        } else {
            &sparse
        };
        // Every format round-trips exactly: binary, or shortest round-trip text.
        assert_same(name, want, m, 0.0);
        let format = FileFormat::from_path(Path::new(name)).unwrap();
        let (back, _) = tessera_read(&dir.path().join(name), format, &ReadOptions::default());
        assert_same(name, &back, m, 0.0);
    }
}

#[test]
fn a_large_csv_streams_in_bounded_batches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.csv");
    let (rows, cols) = (2000u64, 1000u64);
    let mut want_count = 0u64;
    let mut want_sum = 0.0;
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut line = String::new();
        for r in 0..rows {
            line.clear();
            for c in 0..cols {
                let v = (r * 7 + c * 13) % 10;
                want_count += (v != 0) as u64;
                want_sum += v as f64;
                if c > 0 {
                    line.push(',');
                }
                line.push(char::from(b'0' + v as u8));
            }
            line.push('\n');
            out.write_all(line.as_bytes()).unwrap();
        }
    }
    let options = ReadOptions {
        target_shape: Some((rows, cols)),
        ..ReadOptions::default()
    };
    let mut reader = open_reader(&path, FileFormat::Csv, &options).unwrap();
    assert!(reader.row_ordered());
    let (mut batches, mut count, mut sum, mut last_row) = (0, 0u64, 0.0, 0);
    while let Some(batch) = reader.next_cells().unwrap() {
        assert!(batch.len() <= CELL_BATCH);
        assert!(batch.rows.first().is_none_or(|&r| r >= last_row));
        last_row = batch.rows.last().copied().unwrap_or(last_row);
        batches += 1;
        count += batch.len() as u64;
        sum += batch.values.iter().sum::<f64>();
    }
    assert_eq!((count, sum), (want_count, want_sum));
    assert!(
        batches as u64 >= want_count / CELL_BATCH as u64,
        "{batches} batches"
    );
    assert_eq!(reader.final_shape(), Some((rows, cols)));
}
