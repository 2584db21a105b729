//! Classifiers: logistic regression (binomial and multinomial over `X`'s blocks,
//! Newton's method with an L2 penalty) and the linear SVM with squared hinge loss
//! (Newton on the primal; one-vs-rest parfor tasks for more than two classes), and
//! their predictions.
//!
//! A model is a `(p + 2) x K` matrix, one column per class: rows `0..p` the weights, row
//! `p` the intercept, row `p + 1` the class label. A two-class logistic model has the
//! weights in column 1 and zeros in column 0 (so the softmax over the columns is the
//! sigmoid); a two-class SVM has `w` in column 1 and `-w` in column 0. Either way the
//! predicted class is the column with the highest score.

use datafusion::common::Result;
use faer::{Mat, MatRef, Par};

use super::dense::{check_finite, data_error, mm, parameter_error, spd_solve, tmm};
use super::exec::ParforSettings;
use super::panels::RowPanels;
use super::parfor::{self, ParforReport, TaskCost};

/// Parameters shared by `logreg` and `l2svm`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitParams {
    /// L2 penalty (`1 / C` in scikit-learn's terms).
    pub lambda: f64,
    /// Fit an intercept.
    pub intercept: bool,
    /// Newton iterations at most.
    pub max_iter: usize,
    /// Stop when the Newton decrement falls below `tol` (relative to the objective).
    pub tol: f64,
}

/// The sorted distinct labels of `y` (n x 1) and each row's class index.
pub(crate) fn classes(fname: &str, y: MatRef<'_, f64>) -> Result<(Vec<f64>, Vec<usize>)> {
    if y.ncols() != 1 {
        return Err(data_error(format!(
            "{fname}: y must be one column of class labels, it has {} columns",
            y.ncols()
        )));
    }
    check_finite(fname, "y", y)?;
    let mut labels: Vec<f64> = y.col(0).iter().copied().collect();
    labels.sort_by(f64::total_cmp);
    labels.dedup();
    if labels.len() < 2 {
        return Err(data_error(format!(
            "{fname}: y has one class ({}); a classifier needs at least two",
            labels.first().copied().unwrap_or(0.0)
        )));
    }
    let index = y
        .col(0)
        .iter()
        .map(|v| labels.partition_point(|l| l < v))
        .collect();
    Ok((labels, index))
}

fn softplus(z: f64) -> f64 {
    if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    }
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Rows of `a` scaled by `w`.
fn scaled_rows(a: MatRef<'_, f64>, w: &[f64]) -> Mat<f64> {
    Mat::from_fn(a.nrows(), a.ncols(), |i, j| a[(i, j)] * w[i])
}

/// The model matrix from per-class weight columns over the design (`q` rows, the last
/// the intercept when fitted).
fn model(weights: &Mat<f64>, p: usize, intercept: bool, labels: &[f64]) -> Mat<f64> {
    Mat::from_fn(p + 2, weights.ncols(), |i, c| match i {
        i if i < p => weights[(i, c)],
        i if i == p => {
            if intercept {
                weights[(p, c)]
            } else {
                0.0
            }
        }
        _ => labels[c],
    })
}

/// Multinomial logistic regression (three classes or more; two go to
/// [`logreg_binary`]) over the blocks of `x` (never gathered), whose rows' classes
/// `index` among `labels` the caller has read: minimises `sum(log loss) + lambda / 2 *
/// ||W||^2` (the intercept not penalised) by Newton's method with a backtracking line
/// search.
pub(crate) fn logreg_multinomial(
    x: &RowPanels,
    labels: &[f64],
    index: &[usize],
    f: &FitParams,
    par: Par,
) -> Result<Mat<f64>> {
    if f.lambda < 0.0 {
        return Err(parameter_error("logreg: lambda must not be negative"));
    }
    let w = newton_logistic(x, index, labels.len(), f, par)?;
    Ok(model(&w, x.ncols(), f.intercept, labels))
}

/// Binomial logistic regression over the blocks of `x` (never gathered): Newton's
/// method as [`logreg`] does it, each step one pass for `t(X) diag(w) X` (a Gram matrix
/// per block row of the scaled rows) and the gradient together, and one for `X step`; the
/// line search moves `X w` along `X step` without reading `X` again. `index` is each
/// row's class (0 or 1) among the two `labels`.
pub(crate) fn logreg_binary(
    x: &RowPanels,
    labels: &[f64],
    index: &[usize],
    f: &FitParams,
    par: Par,
) -> Result<Mat<f64>> {
    if f.lambda < 0.0 {
        return Err(parameter_error("logreg: lambda must not be negative"));
    }
    let (n, p) = (x.nrows(), x.ncols());
    let q = p + usize::from(f.intercept);
    let target: Vec<f64> = index.iter().map(|&c| c as f64).collect();
    // The objective at `z = X w (+ b)` with weights `w`.
    let objective = |z: &[f64], w: &[f64]| -> f64 {
        let loss: f64 = z
            .iter()
            .zip(&target)
            .map(|(z, t)| softplus(*z) - t * z)
            .sum();
        loss + 0.5 * f.lambda * w[..p].iter().map(|v| v * v).sum::<f64>()
    };
    let mut w = vec![0.0; q];
    let mut z = vec![0.0; n];
    let mut obj = objective(&z, &w);
    for _ in 0..f.max_iter.max(1) {
        let prob: Vec<f64> = z.iter().map(|z| sigmoid(*z)).collect();
        let resid: Vec<f64> = prob.iter().zip(&target).map(|(p, t)| p - t).collect();
        let weight: Vec<f64> = prob.iter().map(|p| p * (1.0 - p)).collect();
        // One read of X for both: the gradient t(X) (P - T) + lambda w (the
        // intercept's the sum of P - T), and the Hessian t(X) D X with the intercept's
        // row and column t(X) d and sum(d).
        let products: &[&[f64]] = if f.intercept {
            &[&resid, &weight]
        } else {
            &[&resid]
        };
        let (gram, mut products) = x.weighted_gram(&weight, products, par)?;
        let mut g = std::mem::take(&mut products[0]);
        for j in 0..p {
            g[j] += f.lambda * w[j];
        }
        let mut h = Mat::<f64>::zeros(q, q);
        h.as_mut()
            .submatrix_mut(0, 0, p, p)
            .copy_from(gram.as_ref());
        if f.intercept {
            g.push(resid.iter().sum());
            let xd = &products[1];
            for j in 0..p {
                h[(j, p)] = xd[j];
                h[(p, j)] = xd[j];
            }
            h[(p, p)] = weight.iter().sum();
        }
        for j in 0..q {
            // The same tiny ridge as the gathered path keeps separable data solvable.
            h[(j, j)] += (if j < p { f.lambda } else { 0.0 }) + 1e-10;
        }
        let why = "the Hessian is singular: x has linearly dependent or constant columns; give lambda > 0";
        if !newton_move(
            x,
            f,
            ("logreg", why),
            &h,
            &g,
            (&mut w, &mut z, &mut obj),
            &objective,
            par,
        )? {
            break;
        }
    }
    let weights = Mat::from_fn(q, 2, |j, c| if c == 1 { w[j] } else { 0.0 });
    Ok(model(&weights, p, f.intercept, labels))
}

/// One damped Newton step of a two-class fit over the blocks of `x`, from the gradient
/// `g` and Hessian `h` at weights `w` (the intercept last when `f.intercept`), scores
/// `z = X w (+ b)` and objective `obj`: the step `h \ g` (`why` says what makes `h`
/// singular), then a backtracking line search that moves `z` along `X step` without
/// reading `x` again. `false` when the fit has converged or no trial decreases the
/// objective.
#[allow(clippy::too_many_arguments)]
fn newton_move(
    x: &RowPanels,
    f: &FitParams,
    (fname, why): (&str, &str),
    h: &Mat<f64>,
    g: &[f64],
    (w, z, obj): (&mut Vec<f64>, &mut Vec<f64>, &mut f64),
    objective: &dyn Fn(&[f64], &[f64]) -> f64,
    par: Par,
) -> Result<bool> {
    let p = x.ncols();
    let gm = Mat::from_fn(g.len(), 1, |r, _| g[r]);
    let step = spd_solve(fname, why, h.as_ref(), gm.as_ref(), None)?;
    let step: Vec<f64> = step.col(0).iter().copied().collect();
    let decrement: f64 = g.iter().zip(&step).map(|(g, s)| g * s).sum();
    if !decrement.is_finite() {
        return Err(data_error(format!("{fname}: Newton's method diverged")));
    }
    if decrement / 2.0 <= f.tol * obj.abs().max(1.0) {
        return Ok(false);
    }
    let mut dz = x.mv(&step[..p], par)?;
    if f.intercept {
        dz.iter_mut().for_each(|v| *v += step[p]);
    }
    let mut t = 1.0;
    for _ in 0..40 {
        let trial_w: Vec<f64> = w.iter().zip(&step).map(|(w, s)| w - t * s).collect();
        let trial_z: Vec<f64> = z.iter().zip(&dz).map(|(z, d)| z - t * d).collect();
        let trial = objective(&trial_z, &trial_w);
        if trial <= *obj - 1e-4 * t * decrement {
            (*w, *z, *obj) = (trial_w, trial_z, trial);
            return Ok(true);
        }
        t *= 0.5;
    }
    Ok(false)
}

/// Newton's method for `free` weight columns (one per class) over the design of `x`
/// (its `p` columns, penalised, then a column of ones when `f.intercept`), read by
/// block rows: one pass for the probabilities and the objective, one for the gradient
/// and every block of the Hessian together.
fn newton_logistic(
    x: &RowPanels,
    index: &[usize],
    free: usize,
    f: &FitParams,
    par: Par,
) -> Result<Mat<f64>> {
    let (n, p) = (x.nrows(), x.ncols());
    let q = p + usize::from(f.intercept);
    let dim = q * free;
    // A block row's design: its rows of x, then the intercept's column of ones.
    let design_rows = |rows: &[f64]| -> Mat<f64> {
        let m = rows.len() / p.max(1);
        Mat::from_fn(m, q, |i, j| if j < p { rows[i * p + j] } else { 1.0 })
    };
    // Probabilities of each free class per row (row-major, `free` per row), and the
    // objective, for weights `w`.
    let eval = |w: &Mat<f64>| -> Result<(Vec<f64>, f64)> {
        let parts = x.fold_rows(
            par,
            || (Vec::new(), 0.0),
            |r0, rows, (prob, loss): &mut (Vec<f64>, f64)| {
                let xa = design_rows(rows);
                let z = mm(xa.as_ref(), w.as_ref(), Par::Seq);
                for i in 0..xa.nrows() {
                    let m = (0..free)
                        .map(|c| z[(i, c)])
                        .fold(f64::NEG_INFINITY, f64::max);
                    let s: f64 = (0..free).map(|c| (z[(i, c)] - m).exp()).sum();
                    prob.extend((0..free).map(|c| (z[(i, c)] - m).exp() / s));
                    *loss += m + s.ln() - z[(i, index[r0 + i])];
                }
                Ok(())
            },
        )?;
        let mut prob = Vec::with_capacity(n * free);
        let mut loss = 0.0;
        for (part, l) in parts {
            prob.extend(part);
            loss += l;
        }
        let penalty: f64 = (0..free)
            .map(|c| (0..p).map(|j| w[(j, c)] * w[(j, c)]).sum::<f64>())
            .sum();
        Ok((prob, loss + 0.5 * f.lambda * penalty))
    };
    let mut w = Mat::<f64>::zeros(q, free);
    let (mut prob, mut obj) = eval(&w)?;
    for _ in 0..f.max_iter.max(1) {
        // Gradient t(Xa) (P - T) in the first `q * free` (class by class), the upper
        // blocks t(Xa) diag(P_c (delta_cd - P_d)) Xa of the Hessian after, row-major.
        let len = q * free + dim * dim;
        let parts = x.fold_rows(
            par,
            || vec![0.0; len],
            |r0, rows, acc: &mut Vec<f64>| {
                let xa = design_rows(rows);
                let m = xa.nrows();
                let pr = |i: usize, c: usize| prob[(r0 + i) * free + c];
                let resid = Mat::from_fn(m, free, |i, c| {
                    pr(i, c) - if index[r0 + i] == c { 1.0 } else { 0.0 }
                });
                let g = tmm(xa.as_ref(), resid.as_ref(), Par::Seq);
                let (grad, h) = acc.split_at_mut(q * free);
                for c in 0..free {
                    for j in 0..q {
                        grad[c * q + j] += g[(j, c)];
                    }
                }
                for c in 0..free {
                    for d in c..free {
                        let weights: Vec<f64> = (0..m)
                            .map(|i| {
                                let pc = pr(i, c);
                                if c == d {
                                    pc * (1.0 - pc)
                                } else {
                                    -pc * pr(i, d)
                                }
                            })
                            .collect();
                        let block = tmm(
                            xa.as_ref(),
                            scaled_rows(xa.as_ref(), &weights).as_ref(),
                            Par::Seq,
                        );
                        for a in 0..q {
                            for b in 0..q {
                                h[(c * q + a) * dim + d * q + b] += block[(a, b)];
                            }
                        }
                    }
                }
                Ok(())
            },
        )?;
        let mut sum = vec![0.0; len];
        for part in parts {
            sum.iter_mut().zip(&part).for_each(|(s, v)| *s += v);
        }
        let (grad, upper) = sum.split_at(q * free);
        let mut h = Mat::from_fn(dim, dim, |r, c| {
            // Blocks below the diagonal mirror those above.
            let (r, c) = if r / q > c / q { (c, r) } else { (r, c) };
            upper[r * dim + c]
        });
        for c in 0..free {
            for j in 0..q {
                // A tiny ridge keeps the over-parametrised softmax (and separable data)
                // solvable; the penalty itself is lambda on the weights.
                h[(c * q + j, c * q + j)] += (if j < p { f.lambda } else { 0.0 }) + 1e-10;
            }
        }
        let g = Mat::from_fn(dim, 1, |r, _| {
            let (c, j) = (r / q, r % q);
            grad[r] + if j < p { f.lambda * w[(j, c)] } else { 0.0 }
        });
        let step = spd_solve(
            "logreg",
            "the Hessian is singular: x has linearly dependent or constant columns; give lambda > 0",
            h.as_ref(),
            g.as_ref(),
            None,
        )?;
        let decrement: f64 = (0..dim).map(|r| g[(r, 0)] * step[(r, 0)]).sum();
        if !decrement.is_finite() {
            return Err(data_error("logreg: Newton's method diverged"));
        }
        if decrement / 2.0 <= f.tol * obj.abs().max(1.0) {
            break;
        }
        let mut t = 1.0;
        let mut moved = false;
        for _ in 0..40 {
            let trial = Mat::from_fn(q, free, |j, c| w[(j, c)] - t * step[(c * q + j, 0)]);
            let (tp, to) = eval(&trial)?;
            if to <= obj - 1e-4 * t * decrement {
                w = trial;
                prob = tp;
                obj = to;
                moved = true;
                break;
            }
            t *= 0.5;
        }
        if !moved {
            break;
        }
    }
    Ok(w)
}

/// The linear SVM with squared hinge loss: one binary problem for two classes, one per
/// class (one-vs-rest) as parfor tasks for more. Minimises `lambda / 2 * ||w||^2 +
/// sum(max(0, 1 - y (x w))^2)`, the intercept penalised like a weight (as liblinear).
pub(crate) fn l2svm(
    x: &RowPanels,
    y: MatRef<'_, f64>,
    f: &FitParams,
    parfor: &ParforSettings,
) -> Result<(Mat<f64>, Option<ParforReport>)> {
    x.check_finite("l2svm", "x")?;
    let (labels, index) = classes("l2svm", y)?;
    if f.lambda <= 0.0 || !f.lambda.is_finite() {
        return Err(parameter_error(format!(
            "l2svm: lambda must be positive, got {}",
            f.lambda
        )));
    }
    let p = x.ncols();
    let q = p + usize::from(f.intercept);
    let k = labels.len();
    let signs = |class: usize| -> Vec<f64> {
        index
            .iter()
            .map(|&l| if l == class { 1.0 } else { -1.0 })
            .collect()
    };
    if k == 2 {
        let w = svm_binary(x, &signs(1), f, parfor::threads(parfor.cores))?;
        let weights = Mat::from_fn(q, 2, |j, c| if c == 1 { w[j] } else { -w[j] });
        return Ok((model(&weights, p, f.intercept, &labels), None));
    }
    let plan = parfor.plan(k, newton_cost(x.nrows(), q, f));
    let par = plan.par();
    let (columns, report) = parfor::run(k, &plan, |c| {
        svm_binary(x, &signs(c), f, par)
            .map_err(|e| e.context(format!("l2svm: class {} against the rest", labels[c])))
    })?;
    let weights = Mat::from_fn(q, k, |j, c| columns[c][j]);
    Ok((model(&weights, p, f.intercept, &labels), Some(report)))
}

/// What one fit by Newton's method costs the optimizer: a Gram pass of `n q^2`
/// multiply-adds per step (about 20 steps at most in practice), the scores, weights and
/// residuals of the rows held.
pub(crate) fn newton_cost(n: usize, q: usize, f: &FitParams) -> TaskCost {
    TaskCost {
        flops: Some(f.max_iter.clamp(1, 20) as f64 * (n * q * q) as f64),
        memory: Some((n * 32 + q * q * 8) as u64),
        uniform: true,
    }
}

/// One binary problem (`ys` the rows' signs) by Newton's method over the blocks of
/// `x`: each step one pass for the Gram matrix of the rows inside the margin and the
/// gradient together, and one for `X step`; the line search moves the scores along
/// `X step` without reading `X` again.
fn svm_binary(x: &RowPanels, ys: &[f64], f: &FitParams, par: Par) -> Result<Vec<f64>> {
    let (n, p) = (x.nrows(), x.ncols());
    let q = p + usize::from(f.intercept);
    // The objective at scores `z = X w (+ b)` with weights `w` (the intercept
    // penalised like a weight, as liblinear does).
    let objective = |z: &[f64], w: &[f64]| -> f64 {
        let loss: f64 = z
            .iter()
            .zip(ys)
            .map(|(z, y)| (1.0 - y * z).max(0.0).powi(2))
            .sum();
        loss + 0.5 * f.lambda * w.iter().map(|v| v * v).sum::<f64>()
    };
    let mut w = vec![0.0; q];
    let mut z = vec![0.0; n];
    let mut obj = objective(&z, &w);
    for _ in 0..f.max_iter.max(1) {
        // Rows inside the margin, and their share of the gradient.
        let active: Vec<f64> = (0..n)
            .map(|i| if 1.0 - ys[i] * z[i] > 0.0 { 1.0 } else { 0.0 })
            .collect();
        let coef: Vec<f64> = (0..n)
            .map(|i| -2.0 * ys[i] * (1.0 - ys[i] * z[i]) * active[i])
            .collect();
        let products: &[&[f64]] = if f.intercept {
            &[&coef, &active]
        } else {
            &[&coef]
        };
        let (gram, mut products) = x.weighted_gram(&active, products, par)?;
        let mut g = std::mem::take(&mut products[0]);
        let mut h = Mat::<f64>::zeros(q, q);
        h.as_mut()
            .submatrix_mut(0, 0, p, p)
            .copy_from(gram.as_ref());
        if f.intercept {
            g.push(coef.iter().sum());
            for j in 0..p {
                h[(j, p)] = products[1][j];
                h[(p, j)] = products[1][j];
            }
            h[(p, p)] = active.iter().sum();
        }
        for a in 0..q {
            g[a] += f.lambda * w[a];
            for b in 0..q {
                h[(a, b)] *= 2.0;
            }
            h[(a, a)] += f.lambda;
        }
        let why = "lambda is too small";
        if !newton_move(
            x,
            f,
            ("l2svm", why),
            &h,
            &g,
            (&mut w, &mut z, &mut obj),
            &objective,
            par,
        )? {
            break;
        }
    }
    Ok(w)
}

/// A model matrix read back: weights (p x K), intercepts and labels.
pub(crate) struct Model {
    weights: Mat<f64>,
    intercepts: Vec<f64>,
    /// Class label of each column.
    pub(crate) labels: Vec<f64>,
}

impl Model {
    /// Reads a model of `fname` for an `x` with `p` columns.
    pub(crate) fn read(fname: &str, m: MatRef<'_, f64>, p: usize) -> Result<Model> {
        if m.nrows() != p + 2 || m.ncols() < 2 {
            return Err(data_error(format!(
                "{fname}: the model must be {}xK (K >= 2 classes) for an x with {p} columns, it is {}x{}",
                p + 2,
                m.nrows(),
                m.ncols()
            )));
        }
        check_finite(fname, "the model", m)?;
        Ok(Model {
            weights: m.subrows(0, p).to_owned(),
            intercepts: (0..m.ncols()).map(|c| m[(p, c)]).collect(),
            labels: (0..m.ncols()).map(|c| m[(p + 1, c)]).collect(),
        })
    }

    /// `x W + b`: one score per row and class.
    pub(crate) fn scores(&self, x: MatRef<'_, f64>, par: Par) -> Mat<f64> {
        let mut s = mm(x, self.weights.as_ref(), par);
        for c in 0..s.ncols() {
            for i in 0..s.nrows() {
                s[(i, c)] += self.intercepts[c];
            }
        }
        s
    }
}

/// Softmax of each row of `scores`: class probabilities.
pub(crate) fn softmax_rows(mut s: Mat<f64>) -> Mat<f64> {
    for i in 0..s.nrows() {
        let m = (0..s.ncols())
            .map(|c| s[(i, c)])
            .fold(f64::NEG_INFINITY, f64::max);
        let mut total = 0.0;
        for c in 0..s.ncols() {
            s[(i, c)] = (s[(i, c)] - m).exp();
            total += s[(i, c)];
        }
        for c in 0..s.ncols() {
            s[(i, c)] /= total;
        }
    }
    s
}

/// Each row's best column and its value.
pub(crate) fn argmax_rows(s: MatRef<'_, f64>) -> Vec<(usize, f64)> {
    (0..s.nrows())
        .map(|i| {
            let mut best = 0;
            for c in 1..s.ncols() {
                if s[(i, c)] > s[(i, best)] {
                    best = c;
                }
            }
            (best, s[(i, best)])
        })
        .collect()
}
