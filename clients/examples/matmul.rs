//! Two matrices loaded into Tessera from Arrow record batches, multiplied in SQL, and
//! the product streamed back and checked against a product computed here.
//!
//!     cargo run -p tessera-client --example matmul -- [URL] [USER PASSWORD]
//!
//! The URL defaults to `tessera serve`'s `http://127.0.0.1:50051` (loopback callers
//! need no password there).

use std::sync::Arc;

use futures::TryStreamExt;
use tessera_client::arrow_array::cast::AsArray;
use tessera_client::arrow_array::types::{Float64Type, Int64Type};
use tessera_client::arrow_array::{Float64Array, Int64Array, RecordBatch};
use tessera_client::{Client, Error};

const N: usize = 300; // a is N x K, b is K x M
const K: usize = 200;
const M: usize = 100;

/// A dense matrix as a row-major vector.
struct Dense {
    rows: usize,
    cols: usize,
    values: Vec<f64>,
}

impl Dense {
    /// Small integers (exact in f64, so the check can be exact), about a third zero.
    fn new(rows: usize, cols: usize, seed: usize) -> Dense {
        let values = (0..rows * cols)
            .map(|n| ((n * 7919 + seed * 104_729) % 13) as f64 - 4.0)
            .map(|v| if v < 0.0 { 0.0 } else { v })
            .collect();
        Dense { rows, cols, values }
    }

    /// The non-zero cells as Tessera's coordinate form (i, j, v).
    fn cells(&self) -> Result<RecordBatch, Error> {
        let (mut i, mut j, mut v) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..self.rows {
            for c in 0..self.cols {
                let value = self.values[r * self.cols + c];
                if value != 0.0 {
                    i.push(r as i64);
                    j.push(c as i64);
                    v.push(value);
                }
            }
        }
        Ok(RecordBatch::try_from_iter([
            ("i", Arc::new(Int64Array::from(i)) as _),
            ("j", Arc::new(Int64Array::from(j)) as _),
            ("v", Arc::new(Float64Array::from(v)) as _),
        ])?)
    }

    /// The naive triple loop.
    fn matmul(&self, other: &Dense) -> Dense {
        let mut values = vec![0.0; self.rows * other.cols];
        for r in 0..self.rows {
            for k in 0..self.cols {
                let a = self.values[r * self.cols + k];
                for c in 0..other.cols {
                    values[r * other.cols + c] += a * other.values[k * other.cols + c];
                }
            }
        }
        Dense {
            rows: self.rows,
            cols: other.cols,
            values,
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("matmul: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = args
        .first()
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let mut builder = Client::builder(url.as_str());
    if let [_, user, password] = args.as_slice() {
        builder = builder.credentials(user, password);
    }
    let client = builder.connect().await?;
    println!("connected to {}", client.endpoint());

    let (a, b) = (Dense::new(N, K, 1), Dense::new(K, M, 2));
    client
        .execute(&format!(
            "DROP MATRIX IF EXISTS a; DROP MATRIX IF EXISTS b;
             CREATE MATRIX a ({N}, {K}); CREATE MATRIX b ({K}, {M})"
        ))
        .await?;
    let loaded_a = client.load_array("a", a.cells()?).await?;
    let loaded_b = client.load_array("b", b.cells()?).await?;
    println!("loaded a ({N} x {K}): {loaded_a} cells, b ({K} x {M}): {loaded_b} cells");

    let mut product = client.query_stream("SELECT * FROM matmul(a, b)").await?;
    let columns: Vec<String> = product
        .schema()
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect();
    println!("result columns: {}", columns.join(", "));

    let mut c = vec![0.0; N * M];
    let (mut batches, mut cells) = (0, 0);
    while let Some(batch) = product.try_next().await? {
        let (Some(i), Some(j), Some(v)) = (
            batch.column(0).as_primitive_opt::<Int64Type>(),
            batch.column(1).as_primitive_opt::<Int64Type>(),
            batch.column(2).as_primitive_opt::<Float64Type>(),
        ) else {
            return Err(format!("unexpected result columns: {:?}", batch.schema()).into());
        };
        for ((i, j), v) in i.values().iter().zip(j.values()).zip(v.values()) {
            let (i, j) = (usize::try_from(*i)?, usize::try_from(*j)?);
            if i >= N || j >= M {
                return Err(format!("cell ({i}, {j}) is outside the {N} x {M} product").into());
            }
            c[i * M + j] = *v;
        }
        batches += 1;
        cells += batch.num_rows();
    }
    println!("streamed {cells} cells in {batches} batches");

    let expected = a.matmul(&b);
    for (i, j) in [(0, 0), (1, 2), (N / 2, M / 2), (N - 1, M - 1)] {
        println!(
            "c[{i}, {j}] = {} (computed here: {})",
            c[i * M + j],
            expected.values[i * M + j]
        );
    }
    let max_error = c
        .iter()
        .zip(&expected.values)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    println!("max |error| against the naive product: {max_error}");
    if max_error > 1e-9 {
        return Err("the product does not match".into());
    }
    println!("ok");
    Ok(())
}
