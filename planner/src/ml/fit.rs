//! `lm_fit(y, x, lambda, intercept)`: linear regression as an aggregate, so that
//! `SELECT g, lm_fit(y, ARRAY[x1, x2]) FROM t GROUP BY g` fits one model per group.
//!
//! Each group's state is the normal equations' sums (`t(X) X`, `t(X) y`, the column
//! sums of X and y, the row count): partial states add, so DataFusion's two-phase
//! hash aggregate runs the accumulation in every partition and a group's fit (one
//! Cholesky solve, [`super::linear::lm_direct`], the same arithmetic as `lm`) happens
//! where its final state is. The groups are the tasks; the partitions of the final
//! aggregate are the workers that run them.

use std::mem::size_of;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Float64Builder, ListArray, ListBuilder, UInt64Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility,
};
use datafusion::physical_expr::expressions::Literal;
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};

use super::dense::{data_error, parameter_error};
use super::linear::{LmParams, LmSolver, lm_direct};
use crate::error::{ErrorKind, TesseraError, tessera_error};

/// The `lm_fit` aggregate function.
pub fn lm_fit_udaf() -> AggregateUDF {
    AggregateUDF::from(LmFit::new())
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct LmFit {
    signature: Signature,
}

impl LmFit {
    fn new() -> Self {
        // A user-defined signature takes any names (`return_type` checks the arguments).
        let mut signature = Signature::user_defined(Volatility::Immutable);
        signature.parameter_names =
            Some(["y", "x", "lambda", "intercept"].map(String::from).to_vec());
        Self { signature }
    }
}

fn float_list() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true)))
}

fn is_number(t: &DataType) -> bool {
    t.is_numeric() || t.is_null()
}

/// The type argument `k` is read as, when its type `t` fits.
fn wanted(k: usize, t: &DataType) -> Option<DataType> {
    match (k, t) {
        (0..=2, t) if is_number(t) => Some(DataType::Float64),
        (1, DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _))
            if is_number(f.data_type()) =>
        {
            Some(float_list())
        }
        (3, DataType::Boolean | DataType::Null) => Some(DataType::Boolean),
        (3, t) if t.is_integer() => Some(DataType::Boolean),
        _ => None,
    }
}

impl AggregateUDFImpl for LmFit {
    fn name(&self) -> &str {
        "lm_fit"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    // A type that does not fit is left as it is for `return_type` to refuse: an error
    // from here reaches the client as DataFusion's text, without its kind.
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        Ok(arg_types
            .iter()
            .enumerate()
            .map(|(k, t)| wanted(k, t).unwrap_or_else(|| t.clone()))
            .collect())
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        if !(2..=4).contains(&arg_types.len()) {
            return Err(tessera_error(
                ErrorKind::UndefinedFunction,
                format!(
                    "lm_fit takes (y, x [, lambda [, intercept]]), got {} arguments",
                    arg_types.len()
                ),
            ));
        }
        for (k, t) in arg_types.iter().enumerate() {
            if wanted(k, t).as_ref() != Some(t) {
                let (name, want) = [
                    ("y", "a number"),
                    ("x", "a number or an array of numbers (ARRAY[x1, x2, ...])"),
                    ("lambda", "a number"),
                    ("intercept", "a boolean"),
                ][k];
                return Err(tessera_error(
                    ErrorKind::DatatypeMismatch,
                    format!("lm_fit: {name} must be {want}, it is {t}"),
                ));
            }
        }
        Ok(float_list())
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new(
                format!("{}[n]", args.name),
                DataType::UInt64,
                true,
            )),
            Arc::new(Field::new(
                format!("{}[sums]", args.name),
                float_list(),
                true,
            )),
        ])
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let constant = |k: usize, what: &str| -> Result<Option<ScalarValue>> {
            let Some(e) = args.exprs.get(k) else {
                return Ok(None);
            };
            match e.downcast_ref::<Literal>() {
                Some(l) => Ok(Some(l.value().clone())),
                None => Err(tessera_error(
                    ErrorKind::FeatureNotSupported,
                    format!("lm_fit: {what} must be a constant, it is {e}"),
                )),
            }
        };
        let lambda = match constant(2, "lambda")? {
            None => 0.0,
            Some(ScalarValue::Float64(Some(v))) if v >= 0.0 && v.is_finite() => v,
            Some(v) => {
                return Err(parameter_error(format!(
                    "lm_fit: lambda must be a finite number >= 0, it is {v}"
                )));
            }
        };
        let intercept = match constant(3, "intercept")? {
            None => true,
            Some(ScalarValue::Boolean(Some(b))) => b,
            Some(v) => {
                return Err(parameter_error(format!(
                    "lm_fit: intercept must be true or false, it is {v}"
                )));
            }
        };
        Ok(Box::new(LmFitAccumulator {
            params: LmParams {
                lambda,
                intercept,
                tol: 0.0,
                max_iter: 0,
                solver: LmSolver::Direct,
            },
            sums: None,
        }))
    }
}

/// One group's normal equations, raw (not centred), as `lm` reads them.
#[derive(Debug, Clone)]
struct Sums {
    n: u64,
    /// `t(X) X`, p x p.
    xtx: Mat<f64>,
    /// `t(X) y`.
    xty: Vec<f64>,
    /// The column sums of X.
    xsum: Vec<f64>,
    ysum: f64,
}

impl Sums {
    fn new(p: usize) -> Self {
        Self {
            n: 0,
            xtx: Mat::zeros(p, p),
            xty: vec![0.0; p],
            xsum: vec![0.0; p],
            ysum: 0.0,
        }
    }

    fn p(&self) -> usize {
        self.xty.len()
    }

    /// The sums packed as one list: `t(X) X` by columns, `t(X) y`, the column sums of
    /// X, the sum of y; `(p + 1)^2` values.
    fn packed(&self) -> Vec<f64> {
        let p = self.p();
        let mut out = Vec::with_capacity((p + 1) * (p + 1));
        for j in 0..p {
            out.extend(self.xtx.col(j).iter());
        }
        out.extend(&self.xty);
        out.extend(&self.xsum);
        out.push(self.ysum);
        out
    }

    fn add_packed(&mut self, n: u64, values: &[f64]) {
        let p = self.p();
        for j in 0..p {
            for i in 0..p {
                self.xtx[(i, j)] += values[j * p + i];
            }
        }
        let rest = &values[p * p..];
        for a in 0..p {
            self.xty[a] += rest[a];
            self.xsum[a] += rest[p + a];
        }
        self.ysum += rest[2 * p];
        self.n += n;
    }
}

#[derive(Debug)]
struct LmFitAccumulator {
    params: LmParams,
    /// None until the first complete row (its x gives p).
    sums: Option<Sums>,
}

impl LmFitAccumulator {
    fn sums(&mut self, p: usize) -> Result<&mut Sums> {
        let sums = self.sums.get_or_insert_with(|| Sums::new(p));
        if sums.p() != p {
            return Err(data_error(format!(
                "lm_fit: x has {p} values in one row and {} in another; every row of a group needs the same number",
                sums.p()
            )));
        }
        Ok(sums)
    }
}

/// Rows whose y and every x value are present, as a dense rows x p matrix and y.
fn complete_rows(y: &Float64Array, x: &ArrayRef) -> Result<Option<(Mat<f64>, Vec<f64>)>> {
    let mut ys = Vec::with_capacity(y.len());
    if let Some(list) = x.as_list_opt::<i32>() {
        let values = list.values().as_primitive::<Float64Type>();
        let mut p = None;
        let mut rows: Vec<usize> = Vec::with_capacity(y.len());
        for r in 0..y.len() {
            if y.is_null(r) || list.is_null(r) {
                continue;
            }
            let (start, end) = (
                list.value_offsets()[r] as usize,
                list.value_offsets()[r + 1] as usize,
            );
            if (start..end).any(|k| values.is_null(k)) {
                continue;
            }
            let len = end - start;
            match p {
                None => p = Some(len),
                Some(q) if q != len => {
                    return Err(data_error(format!(
                        "lm_fit: x has {q} values in one row and {len} in another; every row of a group needs the same number"
                    )));
                }
                Some(_) => {}
            }
            rows.push(r);
            ys.push(y.value(r));
        }
        let Some(p) = p else { return Ok(None) };
        if p == 0 {
            return Err(data_error(
                "lm_fit: x is an empty array; give at least one value",
            ));
        }
        let raw = values.values();
        let offsets = list.value_offsets();
        let m = Mat::from_fn(rows.len(), p, |i, j| raw[offsets[rows[i]] as usize + j]);
        return Ok(Some((m, ys)));
    }
    let x = x.as_primitive::<Float64Type>();
    let mut xs = Vec::with_capacity(y.len());
    for r in 0..y.len() {
        if y.is_valid(r) && x.is_valid(r) {
            ys.push(y.value(r));
            xs.push(x.value(r));
        }
    }
    if ys.is_empty() {
        return Ok(None);
    }
    Ok(Some((Mat::from_fn(xs.len(), 1, |i, _| xs[i]), ys)))
}

impl Accumulator for LmFitAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let y = cast(&values[0], &DataType::Float64)?;
        let y = y.as_primitive::<Float64Type>();
        let Some((x, ys)) = complete_rows(y, &values[1])? else {
            return Ok(());
        };
        let sums = self.sums(x.ncols())?;
        // t(X) X of this batch in one product, then the vectors row by row.
        matmul(
            sums.xtx.as_mut(),
            Accum::Add,
            x.transpose(),
            x.as_ref(),
            1.0,
            Par::Seq,
        );
        for (j, col) in x.col_iter().enumerate() {
            let (mut s, mut sy) = (0.0, 0.0);
            for (v, yv) in col.iter().zip(&ys) {
                s += v;
                sy += v * yv;
            }
            sums.xsum[j] += s;
            sums.xty[j] += sy;
        }
        sums.ysum += ys.iter().sum::<f64>();
        sums.n += ys.len() as u64;
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let n: &UInt64Array = states[0].as_primitive();
        let lists: &ListArray = states[1].as_list();
        for r in 0..lists.len() {
            if n.is_null(r) || lists.is_null(r) || n.value(r) == 0 {
                continue;
            }
            let values = lists.value(r);
            let values = values.as_primitive::<Float64Type>().values();
            let p = (values.len() as f64).sqrt() as usize - 1;
            if (p + 1) * (p + 1) != values.len() {
                return Err(tessera_error(
                    ErrorKind::Internal,
                    format!(
                        "lm_fit: a partial state has {} values, not a square",
                        values.len()
                    ),
                ));
            }
            self.sums(p)?.add_packed(n.value(r), values);
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let (n, packed) = match &self.sums {
            Some(s) => (s.n, s.packed()),
            None => (0, Vec::new()),
        };
        let mut list = ListBuilder::new(Float64Builder::new());
        list.values().append_slice(&packed);
        list.append(true);
        Ok(vec![
            ScalarValue::UInt64(Some(n)),
            ScalarValue::List(Arc::new(list.finish())),
        ])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let null = ScalarValue::List(Arc::new(ListArray::new_null(
            Arc::new(Field::new_list_field(DataType::Float64, true)),
            1,
        )));
        let Some(s) = &self.sums else {
            return Ok(null);
        };
        if s.n == 0 {
            return Ok(null);
        }
        if !s.xtx.col_iter().all(|c| c.iter().all(|v| v.is_finite()))
            || !s.xty.iter().chain(&s.xsum).all(|v| v.is_finite())
        {
            return Err(data_error(
                "lm_fit: x or y has a NaN or infinite value; remove or replace it first",
            ));
        }
        let p = s.p();
        let xty = Mat::from_fn(p, 1, |i, _| s.xty[i]);
        let xsum = Mat::from_fn(1, p, |_, j| s.xsum[j]);
        let beta = match lm_direct(
            &self.params,
            s.xtx.clone(),
            xty,
            xsum.as_ref(),
            s.ysum,
            s.n as usize,
        ) {
            Ok(beta) => beta,
            // A group whose system has no unique solution (too few rows, a constant or
            // dependent column) has no coefficients: NULL, as PostgreSQL's regr_slope.
            Err(e)
                if TesseraError::find(&e).map(TesseraError::kind)
                    == Some(ErrorKind::SingularMatrix) =>
            {
                return Ok(null);
            }
            Err(e) => return Err(e),
        };
        let mut list = ListBuilder::new(Float64Builder::new());
        list.values()
            .append_slice(&beta.col(0).iter().copied().collect::<Vec<_>>());
        list.append(true);
        Ok(ScalarValue::List(Arc::new(list.finish())))
    }

    fn size(&self) -> usize {
        let p = self.sums.as_ref().map_or(0, Sums::p);
        size_of::<Self>() + (p * p + 2 * p) * size_of::<f64>()
    }
}
