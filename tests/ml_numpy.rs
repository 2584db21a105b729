//! The ML builtins through SQL, checked by NumPy, SciPy and scikit-learn: Python writes
//! the data, Tessera loads it with `COPY`, fits and predicts with the builtins and
//! writes every result back to `.npy`; Python then fits the same models its own way
//! and names every result that differs. Expected values never come from Tessera.

use std::path::Path;

use tessera_server::{Database, DatabaseOptions};

use crate::python;

/// The inputs, written by NumPy and scikit-learn's generators.
const INPUTS: &str = r#"
import numpy as np
from sklearn.datasets import make_blobs, make_classification
rng = np.random.default_rng(19)
x = rng.standard_normal((500, 8)) * [1, 2, 3, 1, 1, 5, 0.5, 1] + [0, 1, -2, 3, 0, 0, 10, 0]
beta = rng.standard_normal((8, 1))
y = x @ beta + 3.0 + 0.1 * rng.standard_normal((500, 1))
wide = rng.standard_normal((300, 40))
wy = wide @ rng.standard_normal((40, 1)) + 0.01 * rng.standard_normal((300, 1))
blobs, _ = make_blobs(n_samples=600, centers=4, n_features=3, cluster_std=0.6, random_state=3)
cx, cy = make_classification(n_samples=400, n_features=6, n_informative=4, n_redundant=0, random_state=5)
mx, my = make_classification(n_samples=450, n_features=5, n_informative=4, n_redundant=0,
                             n_classes=3, n_clusters_per_class=1, random_state=6)
for name, a in dict(x=x, y=y, wide=wide, wy=wy, blobs=blobs, cx=cx,
                    cy=cy.reshape(-1, 1).astype(float), mx=mx,
                    my=my.reshape(-1, 1).astype(float)).items():
    np.save(name + '.npy', a)
"#;

/// The checker: each result recomputed by NumPy / scikit-learn.
const CHECK: &str = r#"
import numpy as np, scipy.stats, warnings
from sklearn.linear_model import Ridge, LogisticRegression
from sklearn.svm import LinearSVC
from sklearn.decomposition import PCA
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score
warnings.simplefilter('ignore')
L = lambda n: np.load(n + '.npy')
x, y, wide, wy, blobs = L('x'), L('y'), L('wide'), L('wy'), L('blobs')
cx, cy, mx, my = L('cx'), L('cy').ravel(), L('mx'), L('my').ravel()
bad = []
def close(name, got, want, rtol=1e-6, atol=1e-8):
    got = np.asarray(got, float); want = np.asarray(want, float)
    if got.shape != want.shape or not np.allclose(got, want, rtol=rtol, atol=atol, equal_nan=True):
        err = np.nanmax(np.abs(got - want)) if got.shape == want.shape else 'shape'
        bad.append(f'{name}: got shape {got.shape}, want {want.shape}, max error {err}')
def agree(name, got, want, at_least):
    share = np.mean(np.asarray(got) == np.asarray(want))
    if share < at_least:
        bad.append(f'{name}: {share:.3%} agree, want at least {at_least:.0%}')
def up_to_sign(a, b):
    return a * np.sign(np.sum(a * b, axis=0, keepdims=True))

# lm: least squares with an intercept, ridge with and without one, conjugate gradient.
xi = np.hstack([x, np.ones((500, 1))])
close('lm', L('lm_out'), np.linalg.lstsq(xi, y, rcond=None)[0])
r = Ridge(alpha=2.5, fit_intercept=True, solver='cholesky').fit(x, y)
close('lm_ridge', L('lm_ridge_out'), np.vstack([r.coef_.reshape(-1, 1), r.intercept_]))
r0 = Ridge(alpha=2.5, fit_intercept=False, solver='cholesky').fit(x, y)
close('lm_ridge0', L('lm_ridge0_out'), r0.coef_.reshape(-1, 1))
close('lm_cg', L('lm_cg_out'), np.linalg.lstsq(wide, wy, rcond=None)[0], rtol=1e-6, atol=1e-7)
b = np.linalg.lstsq(xi, y, rcond=None)[0]
close('lm_predict', L('lm_predict_out'), xi @ b)

# cov, cor (Pearson, Spearman).
close('cov', L('cov_out'), np.cov(x, rowvar=False))
close('cor', L('cor_out'), np.corrcoef(x, rowvar=False))
close('spearman', L('spearman_out'), scipy.stats.spearmanr(x).correlation)

# pca: explained variance (and ratio), components and projection up to sign.
p = PCA(n_components=3, svd_solver='full').fit(x)
close('pca_variance', L('pca_variance_out'), np.column_stack([p.explained_variance_, p.explained_variance_ratio_]))
comp = L('pca_components_out')
close('pca_components', up_to_sign(comp, p.components_.T), p.components_.T)
proj = L('pca_out')
close('pca_project', up_to_sign(proj, p.transform(x)), p.transform(x), atol=1e-7)
xs = (x - x.mean(axis=0)) / x.std(axis=0, ddof=1)
ps = PCA(n_components=2, svd_solver='full').fit(xs)
close('pca_scaled_variance', L('pca_scaled_out')[:, 0], ps.explained_variance_)

# kmeans: the same clusters as scikit-learn's up to relabelling.
km = KMeans(n_clusters=4, n_init=10, random_state=0).fit(blobs)
got = np.rint(L('kmeans_labels_out')).astype(int)
ari = adjusted_rand_score(km.labels_, got)
if ari < 0.999:
    bad.append(f'kmeans: adjusted Rand index {ari} against scikit-learn')
cent = L('kmeans_out')
order = [np.argmin(((km.cluster_centers_ - c) ** 2).sum(axis=1)) for c in cent]
close('kmeans_centroids', cent, km.cluster_centers_[order], rtol=1e-6, atol=1e-6)
for scheme in ['naive', 'static', 'fixed', 'factoring']:
    close('kmeans_' + scheme, L('kmeans_' + scheme + '_out'), cent)

# logistic regression: lambda = 1 / C, intercept not penalised.
lr = LogisticRegression(C=2.0, tol=1e-12, max_iter=10000).fit(cx, cy)
model = L('logreg_out')
close('logreg_coef', model[:6, 1], lr.coef_.ravel(), rtol=1e-5, atol=1e-6)
close('logreg_intercept', model[6, 1], lr.intercept_[0], rtol=1e-5, atol=1e-6)
close('logreg_proba', L('logreg_proba_out')[:, 1], lr.predict_proba(cx)[:, 1], rtol=1e-5, atol=1e-6)
agree('logreg_predict', L('logreg_predict_out'), lr.predict(cx), 1.0)
ml = LogisticRegression(C=2.0, tol=1e-12, max_iter=10000).fit(mx, my)
close('logreg_multi_proba', L('logreg_multi_proba_out'), ml.predict_proba(mx), rtol=1e-4, atol=1e-6)
agree('logreg_multi_predict', L('logreg_multi_predict_out'), ml.predict(mx), 0.99)

# linear SVM, squared hinge: lambda = 1 / C, intercept penalised like a weight (liblinear).
sv = LinearSVC(C=0.5, loss='squared_hinge', dual=False, tol=1e-12, max_iter=100000).fit(cx, cy)
model = L('l2svm_out')
close('l2svm_coef', model[:6, 1], sv.coef_.ravel(), rtol=1e-4, atol=1e-5)
close('l2svm_intercept', model[6, 1], sv.intercept_[0], rtol=1e-4, atol=1e-5)
agree('l2svm_predict', L('l2svm_predict_out'), sv.predict(cx), 0.99)
svm = LinearSVC(C=0.5, loss='squared_hinge', dual=False, tol=1e-12, max_iter=100000).fit(mx, my)
model = L('l2svm_multi_out')
close('l2svm_multi_coef', model[:5, :].T, svm.coef_, rtol=1e-4, atol=1e-5)
agree('l2svm_multi_predict', L('l2svm_multi_predict_out'), svm.predict(mx), 0.99)

# LATERAL sweeps: one ridge fit and one logistic regression per row of a table.
lambdas = [0.5, 2.5, 10.0]
for k, lam in enumerate(lambdas):
    r = Ridge(alpha=lam, fit_intercept=True, solver='cholesky').fit(x, y)
    close(f'lateral_lm[{k}]', L('lateral_lm_out')[k], np.concatenate([r.coef_.ravel(), r.intercept_]))
    lr = LogisticRegression(C=1 / lam, tol=1e-12, max_iter=10000).fit(cx, cy)
    close(f'lateral_logreg[{k}]', L('lateral_logreg_out')[k],
          np.concatenate([lr.coef_.ravel(), lr.intercept_]), rtol=1e-5, atol=1e-6)
# One ridge fit per group of rows, the group's rows chosen by a subquery over the row.
for k, (lo, hi) in enumerate([(0, 150), (150, 330), (330, 500)]):
    r = Ridge(alpha=1.0, fit_intercept=True, solver='cholesky').fit(x[lo:hi], y[lo:hi])
    close(f'per_group_lm[{k}]', L('per_group_lm_out')[k], np.concatenate([r.coef_.ravel(), r.intercept_]))
print('\n'.join(bad) or 'ok')
"#;

#[test]
fn every_builtin_matches_numpy_and_scikit_learn() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    python::run(d, INPUTS);
    let p = |f: &str| d.join(f).display().to_string();
    let mut script = String::new();
    let load = [
        ("x", "(500, 8) BLOCK (64, 8)"),
        ("y", "(500, 1) BLOCK (64, 1)"),
        ("wide", "(300, 40) BLOCK (64, 16)"),
        ("wy", "(300, 1) BLOCK (64, 1)"),
        ("blobs", "(600, 3) BLOCK (100, 3)"),
        ("cx", "(400, 6)"),
        ("cy", "(400, 1)"),
        ("mx", "(450, 5)"),
        ("my", "(450, 1)"),
    ];
    for (name, shape) in load {
        script.push_str(&format!(
            "CREATE MATRIX {name} {shape}; COPY {name} FROM '{}' WITH (FORMAT npy);\n",
            p(&format!("{name}.npy"))
        ));
    }
    // A matrix result: stored with its shape, written out as .npy.
    let matrix = |script: &mut String, name: &str, shape: (u64, u64), sql: &str| {
        script.push_str(&format!(
            "CREATE MATRIX {name}_out ({}, {}) AS SELECT * FROM {sql};\n\
             COPY {name}_out TO '{}' WITH (FORMAT npy);\n",
            shape.0,
            shape.1,
            p(&format!("{name}_out.npy"))
        ));
    };
    matrix(&mut script, "lm", (9, 1), "lm(x, y, intercept => 1)");
    matrix(
        &mut script,
        "lm_ridge",
        (9, 1),
        "lm(x, y, lambda => 2.5, intercept => true)",
    );
    matrix(&mut script, "lm_ridge0", (8, 1), "lm(x, y, 2.5)");
    matrix(
        &mut script,
        "lm_cg",
        (40, 1),
        "lm(wide, wy, solver => 'cg', tol => 1e-12, max_iter => 500)",
    );
    matrix(
        &mut script,
        "lm_predict",
        (500, 1),
        "lm_predict(x, lm(x, y, 0, 1))",
    );
    matrix(&mut script, "cov", (8, 8), "cov(x)");
    matrix(&mut script, "cor", (8, 8), "cor(x)");
    matrix(
        &mut script,
        "spearman",
        (8, 8),
        "cor(x, method => 'spearman')",
    );
    matrix(&mut script, "pca_variance", (3, 2), "pca_variance(x, 3)");
    matrix(
        &mut script,
        "pca_components",
        (8, 3),
        "pca_components(x, 3)",
    );
    matrix(&mut script, "pca", (500, 3), "pca(x, 3)");
    matrix(
        &mut script,
        "pca_scaled",
        (2, 2),
        "pca_variance(x, 2, center => 1, scale => 1)",
    );
    matrix(
        &mut script,
        "kmeans",
        (4, 3),
        "kmeans(blobs, 4, 10, 100, 7)",
    );
    for scheme in ["naive", "static", "fixed", "factoring"] {
        script.push_str(&format!("SET parfor.scheme = '{scheme}';\n"));
        matrix(
            &mut script,
            &format!("kmeans_{scheme}"),
            (4, 3),
            "kmeans(blobs, 4, 10, 100, 7)",
        );
    }
    script.push_str("SET parfor.scheme = 'auto';\n");
    matrix(
        &mut script,
        "logreg",
        (8, 2),
        "logreg(cx, cy, lambda => 0.5)",
    );
    matrix(
        &mut script,
        "logreg_proba",
        (400, 2),
        "logreg_proba(cx, logreg(cx, cy, lambda => 0.5))",
    );
    matrix(
        &mut script,
        "logreg_multi_proba",
        (450, 3),
        "logreg_proba(mx, logreg(mx, my, 0.5))",
    );
    matrix(&mut script, "l2svm", (8, 2), "l2svm(cx, cy, lambda => 2)");
    matrix(
        &mut script,
        "l2svm_multi",
        (7, 3),
        "l2svm(mx, my, lambda => 2)",
    );
    // Tables: coordinates then the value, written as a dense .npy.
    let mut table = |name: &str, sql: &str| {
        script.push_str(&format!(
            "COPY ({sql}) TO '{}';\n",
            p(&format!("{name}_out.npy"))
        ));
    };
    table(
        "kmeans_labels",
        "SELECT i, cluster FROM kmeans_predict(blobs, kmeans(blobs, 4, 10, 100, 7))",
    );
    table(
        "logreg_predict",
        "SELECT i, label FROM logreg_predict(cx, logreg(cx, cy, lambda => 0.5))",
    );
    table(
        "logreg_multi_predict",
        "SELECT i, label FROM logreg_predict(mx, logreg(mx, my, 0.5))",
    );
    table(
        "l2svm_predict",
        "SELECT i, label FROM l2svm_predict(cx, l2svm(cx, cy, 2))",
    );
    table(
        "l2svm_multi_predict",
        "SELECT i, label FROM l2svm_predict(mx, l2svm(mx, my, 2))",
    );
    // One fit per row of a table of penalties: coefficients as (row, coefficient).
    script.push_str(
        "CREATE TABLE sweep (k BIGINT, lambda DOUBLE PRECISION);\n\
         INSERT INTO sweep VALUES (0, 0.5), (1, 2.5), (2, 10.0);\n",
    );
    script.push_str(&format!(
        "COPY (SELECT s.k, m.i, m.v FROM sweep s, LATERAL lm(x, y, lambda => s.lambda, intercept => 1) m) TO '{}';\n",
        p("lateral_lm_out.npy")
    ));
    script.push_str(&format!(
        "COPY (SELECT s.k, m.i, m.v FROM sweep s, LATERAL logreg(cx, cy, lambda => s.lambda, tol => 1e-13) m WHERE m.j = 1 AND m.i < 7) TO '{}';\n",
        p("lateral_logreg_out.npy")
    ));
    // One fit per group of x's rows: a LATERAL call whose subqueries read the group.
    script.push_str(
        "CREATE TABLE parts (k BIGINT, lo BIGINT, hi BIGINT);\n\
         INSERT INTO parts VALUES (0, 0, 150), (1, 150, 330), (2, 330, 500);\n",
    );
    script.push_str(&format!(
        "COPY (SELECT g.k, m.i, m.v FROM parts g, LATERAL lm(\
         (SELECT i - g.lo AS i, j, v FROM x WHERE i >= g.lo AND i < g.hi), \
         (SELECT i - g.lo AS i, j, v FROM y WHERE i >= g.lo AND i < g.hi), \
         lambda => 1.0, intercept => 1) m) TO '{}';\n",
        p("per_group_lm_out.npy")
    ));
    run_script(&d.join("db"), &script);
    let verdict = python::run(d, CHECK);
    assert_eq!(
        verdict.trim(),
        "ok",
        "results that differ from NumPy / scikit-learn"
    );
}

/// Runs `script` on a four-partition database in `dir`.
fn run_script(dir: &Path, script: &str) {
    let rt = crate::sql_database::runtime();
    rt.block_on(async {
        let options = DatabaseOptions {
            target_partitions: Some(4),
            ..DatabaseOptions::default()
        };
        let db = Database::open_with(dir, options).unwrap();
        db.sql(script).await.unwrap_or_else(|e| panic!("{e}"));
    });
}
