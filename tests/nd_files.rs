//! Array files of any rank through SQL, checked by NumPy and SciPy: `.npy` files of 1, 3
//! and 4 dimensions (C and Fortran order, several dtypes) loaded into n-d arrays and
//! exported back; `.npz` archives (`savez`, `savez_compressed`, SciPy's `save_npz`);
//! `COPY (query) TO 'file.npy'`. NumPy writes every input and reads every output; the
//! expected cells and verdicts are NumPy's.

use std::collections::BTreeMap;
use std::path::Path;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Float64Type, Int64Type, UInt64Type};
use tessera_server::Database;

use crate::python;
use crate::sql_database::runtime;

/// Cells by coordinates: the value's bits (so NaN equals NaN and nothing rounds).
pub(crate) type CellMap = BTreeMap<Vec<i64>, u64>;

/// NumPy's non-zero cells of each array it printed as `== name` then `x y ... repr(v)`.
pub(crate) fn numpy_cells(out: &str) -> BTreeMap<String, CellMap> {
    let mut arrays = BTreeMap::new();
    let mut current: Option<(String, CellMap)> = None;
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"==") {
            arrays.extend(current.take());
            current = Some((words[1].to_string(), CellMap::new()));
            continue;
        }
        let (_, cells) = current.as_mut().expect("a name comes first");
        let (value, coords) = words.split_last().unwrap();
        let key = coords.iter().map(|c| c.parse().unwrap()).collect();
        cells.insert(key, value.parse::<f64>().unwrap().to_bits());
    }
    arrays.extend(current);
    arrays
}

/// Tessera's cells of a query returning coordinates then one value.
pub(crate) fn tessera_cells(batches: &[RecordBatch]) -> CellMap {
    let mut cells = CellMap::new();
    for b in batches {
        let n = b.num_columns() - 1;
        for r in 0..b.num_rows() {
            let key = (0..n)
                .map(|c| b.column(c).as_primitive::<Int64Type>().value(r))
                .collect();
            let v = b.column(n).as_primitive::<Float64Type>().value(r);
            cells.insert(key, v.to_bits());
        }
    }
    cells
}

/// Prints arrays' non-zero cells for [`numpy_cells`].
const DUMP: &str = r#"
import numpy as np, scipy.sparse as sp
def dump(name, a):
    a = a.toarray() if hasattr(a, 'toarray') else np.asarray(a)
    a = np.asarray(a, dtype=np.float64)
    print('==', name)
    for idx in zip(*np.nonzero(a)):
        print(*[int(i) for i in idx], repr(float(a[idx])))
"#;

pub(crate) fn path(dir: &Path, file: &str) -> String {
    dir.join(file).display().to_string()
}

#[test]
fn npy_files_of_any_rank_load_into_nd_arrays_and_export_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let reference = numpy_cells(&python::run(
        d,
        &format!(
            "{DUMP}\n{}",
            r#"
rng = np.random.default_rng(17)
t3 = rng.standard_normal((7, 5, 6))
t3[rng.random(t3.shape) < 0.3] = 0
t3[0, 0, 0], t3[1, 2, 3], t3[6, 4, 5], t3[2, 0, 1] = 1e-300, np.nan, np.inf, 1 / 3
arrays = {
    'vec': rng.standard_normal(37),
    't3': t3,
    't3f': np.asfortranarray(t3.astype(np.float32)),
    't4': rng.integers(-1000, 1000, (3, 4, 2, 5)).astype('>i4'),
    't4f': np.asfortranarray(rng.integers(0, 3, (3, 4, 2, 5)).astype(bool)),
}
for name, a in arrays.items():
    np.save(name + '.npy', a)
    dump(name, np.load(name + '.npy'))
"#
        ),
    ));
    assert_eq!(reference.len(), 5);
    assert!(!reference["t4f"].is_empty() && !reference["t3f"].is_empty());

    // Blocks that do not divide the shape, so bands and block tiles have ragged edges.
    let shapes = [
        ("vec", "i 0:36 BLOCK 10", "i"),
        (
            "t3",
            "x 0:6 BLOCK 3, y 0:4 BLOCK 2, z 0:5 BLOCK 4",
            "x, y, z",
        ),
        (
            "t3f",
            "x 0:6 BLOCK 4, y 0:4 BLOCK 5, z 0:5 BLOCK 5",
            "x, y, z",
        ),
        (
            "t4",
            "a 0:2 BLOCK 2, b 0:3 BLOCK 3, c 0:1 BLOCK 1, d 0:4 BLOCK 2",
            "a, b, c, d",
        ),
        (
            "t4f",
            "a 0:2 BLOCK 1, b 0:3 BLOCK 4, c 0:1 BLOCK 2, d 0:4 BLOCK 3",
            "a, b, c, d",
        ),
    ];
    runtime().block_on(async {
        let db = Database::open(d.join("db")).unwrap();
        for (name, dims, coords) in shapes {
            db.sql(&format!(
                "CREATE ARRAY {name} (v DOUBLE) DIMENSIONS ({dims});
                 COPY {name} FROM '{}';
                 COPY {name} TO '{}'",
                path(d, &format!("{name}.npy")),
                path(d, &format!("{name}_out.npy")),
            ))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            let got = db
                .sql(&format!("SELECT {coords}, v FROM {name}"))
                .await
                .unwrap();
            let got = tessera_cells(&got);
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                reference[name].keys().collect::<Vec<_>>(),
                "{name}: non-zero positions"
            );
            assert_eq!(got, reference[name], "{name}: values");
        }

        // A file of another shape or rank loads nothing.
        let err = db
            .sql(&format!("COPY t3f FROM '{}'", path(d, "t4.npy")))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("t4.npy"), "{err}");
        assert!(
            err.contains("holds a 3x4x2x5 array but the target shape is 7x5x6"),
            "{err}"
        );
        let err = db
            .sql(&format!(
                "COPY t3 TO '{}' WITH (FORMAT csv)",
                path(d, "t3.csv")
            ))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("only 2-d ones to CSV"), "{err}");
    });
    assert!(!d.join("t3.csv").exists());

    // NumPy reads each export as the float64 array of the original, bit for bit.
    let verdict = python::run(
        d,
        r#"
import numpy as np
bad = []
for name in ['vec', 't3', 't3f', 't4', 't4f']:
    a = np.load(name + '.npy').astype('<f8')
    b = np.load(name + '_out.npy')
    if b.dtype != np.dtype('<f8') or b.shape != a.shape or a.tobytes() != b.tobytes():
        bad.append(name)
print(' '.join(bad) or 'ok')
"#,
    );
    assert_eq!(verdict.trim(), "ok");
}

#[test]
fn npz_members_load_into_arrays_of_their_names() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let reference = numpy_cells(&python::run(
        d,
        &format!(
            "{DUMP}\n{}",
            r#"
rng = np.random.default_rng(5)
a = rng.standard_normal((6, 4, 5)); a[rng.random(a.shape) < 0.4] = 0
b = rng.integers(-9, 9, 50).astype(np.int64)
m = np.asfortranarray(rng.standard_normal((9, 7)))
np.savez('plain.npz', a=a, b=b, m=m)
np.savez_compressed('packed.npz', a=a, b=b, m=m)
np.savez('one.npz', only=m)
# A compressed member with damaged data: the archive's CRC or the inflater must catch it.
import zipfile
raw = bytearray(open('packed.npz', 'rb').read())
with zipfile.ZipFile('packed.npz') as z:
    info = z.getinfo('m.npy')
start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
raw[start + info.compress_size // 2] ^= 0xFF
open('damaged.npz', 'wb').write(bytes(raw))
dump('a', a); dump('b', b); dump('m', m)
"#
        ),
    ));
    runtime().block_on(async {
        let db = Database::open(d.join("db")).unwrap();
        for archive in ["plain.npz", "packed.npz"] {
            let file = path(d, archive);
            // Each COPY picks the member named like its array; MEMBER names another.
            db.sql(&format!(
                "CREATE ARRAY a (v DOUBLE) DIMENSIONS (x 0:5 BLOCK 4, y 0:3 BLOCK 3, z 0:4 BLOCK 2);
                 CREATE ARRAY b (v DOUBLE) DIMENSIONS (i 0:49 BLOCK 16);
                 CREATE MATRIX m (9, 7) BLOCK (4, 4);
                 CREATE MATRIX other (9, 7) BLOCK (5, 3);
                 COPY a FROM '{file}'; COPY b FROM '{file}'; COPY m FROM '{file}';
                 COPY other FROM '{file}' WITH (FORMAT npz, MEMBER 'm.npy')"
            ))
            .await
            .unwrap_or_else(|e| panic!("{archive}: {e}"));
            for (array, member, coords) in [
                ("a", "a", "x, y, z"),
                ("b", "b", "i"),
                ("m", "m", "i, j"),
                ("other", "m", "i, j"),
            ] {
                let got = db
                    .sql(&format!("SELECT {coords}, v FROM {array}"))
                    .await
                    .unwrap();
                assert_eq!(tessera_cells(&got), reference[member], "{archive}: {array}");
            }
            db.sql("DROP ARRAY a, b, m, other").await.unwrap();
        }

        // An archive of one array loads into an array of any name.
        db.sql(&format!(
            "CREATE MATRIX solo (9, 7); COPY solo FROM '{}'",
            path(d, "one.npz")
        ))
        .await
        .unwrap();
        let got = db.sql("SELECT i, j, v FROM solo").await.unwrap();
        assert_eq!(tessera_cells(&got), reference["m"]);

        // Errors name the file and what is wrong, and load nothing.
        db.sql("CREATE MATRIX z (9, 7)").await.unwrap();
        let copy_err = |sql: String| {
            let db = &db;
            async move { db.sql(&sql).await.unwrap_err().to_string() }
        };
        let err = copy_err(format!("COPY z FROM '{}'", path(d, "plain.npz"))).await;
        assert!(err.contains("plain.npz"), "{err}");
        assert!(
            err.contains("holds several arrays (a, b, m); name one with MEMBER"),
            "{err}"
        );
        let err = copy_err(format!(
            "COPY z FROM '{}' WITH (MEMBER 'nope')",
            path(d, "plain.npz")
        ))
        .await;
        assert!(
            err.contains("no member 'nope'; its members are a, b, m"),
            "{err}"
        );
        let err = copy_err(format!(
            "COPY z FROM '{}' WITH (MEMBER 'a')",
            path(d, "plain.npz")
        ))
        .await;
        assert!(
            err.contains("member 'a': the file holds a 6x4x5 array but the target shape is 9x7"),
            "{err}"
        );
        let err = copy_err(format!(
            "COPY z FROM '{}' WITH (MEMBER 'm')",
            path(d, "damaged.npz")
        ))
        .await;
        assert!(
            err.contains("damaged.npz") && err.contains("member 'm'"),
            "{err}"
        );
        let err = copy_err(format!(
            "COPY z FROM '{}' WITH (FORMAT npy, MEMBER 'm')",
            path(d, "plain.npz")
        ))
        .await;
        assert!(err.contains("MEMBER applies to npz archives only"), "{err}");
        let count = db.sql("SELECT count(*) FROM z").await.unwrap();
        assert_eq!(count[0].column(0).as_primitive::<Int64Type>().value(0), 0);
    });
}

#[test]
fn npz_scipy_sparse_matrices_load_as_scipy_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    python::run(
        d,
        r#"
import numpy as np, scipy.sparse as sp
s = sp.random(41, 29, density=0.08, random_state=3, format='coo')
sp.save_npz('csr.npz', s.tocsr())
sp.save_npz('csc.npz', s.tocsc(), compressed=False)
# COO with a repeated cell: SciPy sums duplicates when it densifies.
row = np.append(s.row, [s.row[0], 40]); col = np.append(s.col, [s.col[0], 28])
val = np.append(s.data, [2.5, -1.0])
sp.save_npz('coo.npz', sp.coo_matrix((val, (row, col)), shape=(41, 29)))
sp.save_npz('csr_i.npz', sp.csr_matrix(np.arange(41 * 29).reshape(41, 29) % 7 == 0).astype(np.int32))
"#,
    );
    runtime().block_on(async {
        let db = Database::open(d.join("db")).unwrap();
        for name in ["csr", "csc", "coo", "csr_i"] {
            db.sql(&format!(
                "CREATE MATRIX {name} (41, 29) BLOCK (16, 8);
                 COPY {name} FROM '{}';
                 COPY {name} TO '{}'",
                path(d, &format!("{name}.npz")),
                path(d, &format!("{name}_out.npy")),
            ))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let err = db
            .sql(&format!(
                "CREATE MATRIX small (40, 29); COPY small FROM '{}'",
                path(d, "csr.npz")
            ))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("csr.npz") && err.contains("holds a 41x29 sparse matrix"),
            "{err}"
        );
    });
    let verdict = python::run(
        d,
        r#"
import numpy as np, scipy.sparse as sp
bad = [n for n in ['csr', 'csc', 'coo', 'csr_i']
       if not np.array_equal(np.load(n + '_out.npy'), sp.load_npz(n + '.npz').toarray().astype(np.float64))]
print(' '.join(bad) or 'ok')
"#,
    );
    assert_eq!(verdict.trim(), "ok");
}

#[test]
fn npy_copy_query_to_file_writes_coordinates_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    python::run(
        d,
        r#"
import numpy as np
rng = np.random.default_rng(23)
np.save('a.npy', rng.standard_normal((13, 9)) + 5)
np.save('t.npy', rng.standard_normal((4, 3, 5)) + 5)
"#,
    );
    runtime().block_on(async {
        let db = Database::open(d.join("db")).unwrap();
        let rows = db
            .sql(&format!(
                "CREATE MATRIX a (13, 9) BLOCK (5, 4); COPY a FROM '{}';
                 CREATE ARRAY t (v DOUBLE) DIMENSIONS (x 0:3 BLOCK 3, y 0:2 BLOCK 2, z 0:4 BLOCK 2);
                 COPY t FROM '{}';
                 COPY (SELECT i, j, v * 2 FROM a) TO '{}';
                 COPY (SELECT x, y, z, v FROM t WHERE z < 3) TO '{}';
                 COPY (SELECT CAST(k AS INT), w FROM (VALUES (0, 1.5), (3, 2.0), (3, 0.25)) AS s(k, w)) TO '{}'",
                path(d, "a.npy"),
                path(d, "t.npy"),
                path(d, "a2.npy"),
                path(d, "t3.npy"),
                path(d, "v.npy"),
            ))
            .await
            .unwrap();
        let last = rows.last().unwrap();
        assert_eq!(last.column(0).as_primitive::<UInt64Type>().value(0), 3);

        let err = db
            .sql(&format!(
                "COPY (SELECT i - 1, j, v FROM a) TO '{}'",
                path(d, "neg.npy")
            ))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("coordinate") && err.contains("is -1"), "{err}");
        let err = db
            .sql(&format!("COPY (SELECT v FROM a) TO '{}'", path(d, "v_only.npy")))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("must return coordinates and a value"), "{err}");
    });
    assert!(!d.join("neg.npy").exists() && !d.join("v_only.npy").exists());
    let leftovers: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let verdict = python::run(
        d,
        r#"
import numpy as np
a = np.load('a.npy'); t = np.load('t.npy')
want_v = np.zeros(4); np.add.at(want_v, [0, 3, 3], [1.5, 2.0, 0.25])
checks = {
    'matrix': np.array_equal(np.load('a2.npy'), a * 2),
    'nd': np.array_equal(np.load('t3.npy'), t[:, :, :3]),
    'vector': np.array_equal(np.load('v.npy'), want_v),
}
print(' '.join(k for k, ok in checks.items() if not ok) or 'ok')
"#,
    );
    assert_eq!(verdict.trim(), "ok");
}

#[test]
fn copy_query_to_npz_and_mtx_files_numpy_and_scipy_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    python::run(
        d,
        r#"
import numpy as np
rng = np.random.default_rng(29)
np.save('a.npy', rng.standard_normal((11, 7)) + 5)
np.save('t.npy', rng.standard_normal((3, 4, 2)) + 5)
"#,
    );
    runtime().block_on(async {
        let db = Database::open(d.join("db")).unwrap();
        db.sql(&format!(
            "CREATE MATRIX a (11, 7) BLOCK (4, 3); COPY a FROM '{}';
             CREATE ARRAY t (v DOUBLE) DIMENSIONS (x 0:2 BLOCK 2, y 0:3 BLOCK 2, z 0:1 BLOCK 1);
             COPY t FROM '{}';
             COPY (SELECT i, j, v * 3 FROM a) TO '{}';
             COPY (SELECT x, y, z, v FROM t) TO '{}' OPTIONS (member 'cube');
             COPY (SELECT i, j, v FROM a WHERE i % 2 = 0) TO '{}';
             COPY (SELECT i, j, v FROM a WHERE j < 3) TO '{}' STORED AS NPZ",
            path(d, "a.npy"),
            path(d, "t.npy"),
            path(d, "a3.npz"),
            path(d, "t.npz"),
            path(d, "even.mtx"),
            path(d, "left.bin"),
        ))
        .await
        .unwrap();
        // Refused: a 3-d query to Matrix Market, an option Matrix Market has no use for,
        // a member name that is not one.
        for (sql, wanted) in [
            (
                format!("COPY (SELECT x, y, z, v FROM t) TO '{}'", path(d, "t.mtx")),
                "holds a matrix",
            ),
            (
                format!(
                    "COPY (SELECT i, j, v FROM a) TO '{}' OPTIONS (member 'x')",
                    path(d, "o.mtx")
                ),
                "takes no OPTIONS",
            ),
            (
                format!(
                    "COPY (SELECT i, j, v FROM a) TO '{}' OPTIONS (member '../x')",
                    path(d, "bad.npz")
                ),
                "not a member name",
            ),
        ] {
            let err = db.sql(&sql).await.unwrap_err().to_string();
            assert!(err.contains(wanted), "{sql}: {err}");
        }
    });
    let verdict = python::run(
        d,
        r#"
import numpy as np, scipy.io
a = np.load('a.npy'); t = np.load('t.npy')
z = np.load('a3.npz'); c = np.load('t.npz'); left = np.load('left.bin')
even = scipy.io.mmread('even.mtx').toarray()
want_even = np.zeros((11, 7)); want_even[0::2] = a[0::2]
checks = {
    'members': z.files == ['arr_0'] and c.files == ['cube'] and left.files == ['arr_0'],
    'matrix': np.array_equal(z['arr_0'], a * 3),
    'nd': np.array_equal(c['cube'], t),
    'mtx': even.shape == (11, 7) and np.array_equal(even, want_even),
    'stored_as': np.array_equal(left['arr_0'], a[:, :3]),
}
print(' '.join(k for k, ok in checks.items() if not ok) or 'ok')
"#,
    );
    assert_eq!(verdict.trim(), "ok");
}

/// Both zeros are zero, as in NumPy's `count_nonzero` and SciPy: a `-0.0` inserted or
/// loaded is not a stored cell, is not counted, and exports as `0.0`; NaN is stored.
#[test]
fn negative_zero_is_a_zero_inserted_loaded_and_exported() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    python::run(
        d,
        r#"
import numpy as np
m = np.zeros((4, 5)); m[1, 2] = -0.0; m[3, 4] = 2.5; m[0, 0] = -0.0; m[2, 2] = np.nan
np.save('m.npy', m)
"#,
    );
    runtime().block_on(async {
        let db = Database::open(d.join("db")).unwrap();
        db.sql(&format!(
            "CREATE MATRIX s (4, 5) BLOCK (2, 2) SPARSE;
             INSERT INTO s VALUES (0, 1, -0.0), (2, 3, CAST('-0' AS DOUBLE)), (3, 3, 1.0);
             CREATE MATRIX m (4, 5) BLOCK (4, 5);
             COPY m FROM '{}';
             COPY (SELECT i, j, v FROM s) TO '{}';
             COPY m TO '{}'",
            path(d, "m.npy"),
            path(d, "s_out.npy"),
            path(d, "m_out.npy"),
        ))
        .await
        .unwrap();
        // The stored cells: NumPy's count_nonzero of the same values.
        for (name, wanted) in [("s", vec![(3, 3)]), ("m", vec![(2, 2), (3, 4)])] {
            let batches = db
                .sql(&format!("SELECT i, j FROM {name} ORDER BY i, j"))
                .await
                .unwrap();
            let cells: Vec<(i64, i64)> = batches
                .iter()
                .flat_map(|b| {
                    (0..b.num_rows()).map(move |r| {
                        (
                            b.column(0).as_primitive::<Int64Type>().value(r),
                            b.column(1).as_primitive::<Int64Type>().value(r),
                        )
                    })
                })
                .collect();
            assert_eq!(cells, wanted, "{name}");
        }
    });
    let verdict = python::run(
        d,
        r#"
import numpy as np
s = np.load('s_out.npy'); m = np.load('m_out.npy'); src = np.load('m.npy')
checks = {
    's': int(np.signbit(s).sum()) == 0 and np.count_nonzero(s) == 1 and s[3, 3] == 1.0,
    'm_values': np.array_equal(m, src, equal_nan=True),
    'm_zeros': int(np.signbit(m).sum()) == 0,
}
print(' '.join(k for k, ok in checks.items() if not ok) or 'ok')
"#,
    );
    assert_eq!(verdict.trim(), "ok");
}
