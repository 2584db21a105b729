//! The block sums' fixed order: partials that arrive in any order add up to the same
//! bits, the ones worked out by hand for the order [`ORD`] gives them.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::SessionContext;
use tessera_storage::{Block, DenseBlock};

use super::{BlockBatches, BlockProductExec, BlockRows, BlockSumExec, ORD, partial_rows};

/// Four values whose float sum depends on the order they are added in: in this order
/// `1e16 + 1` rounds back to `1e16` (the spacing of doubles there is 2), the next term
/// cancels it and the last leaves 1. Added as 1, 1, 1e16, -1e16 they leave 2, and as
/// 1e16, -1e16, 1, 1 they leave 2 as well.
const TERMS: [f64; 4] = [1e16, 1.0, -1e16, 1.0];
const IN_ORDER: f64 = 1.0;

fn one(v: f64) -> Block {
    Block::Dense(DenseBlock::new(1, 1, vec![v]).unwrap())
}

/// The arrival orders tried: as ordered, reversed, and two interleavings.
const ARRIVALS: [[usize; 4]; 4] = [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [0, 2, 1, 3]];

/// The single value of block `(0, 0)` in `batches`.
fn value(batches: &[RecordBatch]) -> f64 {
    let mut found = Vec::new();
    for b in batches {
        let rows = BlockRows::new(b, 0).unwrap();
        for row in 0..rows.len() {
            assert_eq!(rows.key(row), (0, 0));
            found.push(rows.block(row).unwrap().to_dense().values()[0]);
        }
    }
    assert_eq!(found.len(), 1, "{found:?}");
    found[0]
}

async fn run(plan: Arc<dyn ExecutionPlan>) -> Vec<RecordBatch> {
    collect(plan, SessionContext::new().task_ctx())
        .await
        .unwrap()
}

#[tokio::test]
async fn block_sums_add_partials_in_their_order_whatever_order_they_arrive_in() {
    for arrival in ARRIVALS {
        // Each partial its own batch, in the order of `arrival`.
        let batches: Vec<RecordBatch> = arrival
            .iter()
            .map(|&ord| {
                let mut out = BlockBatches::partials();
                out.push_partial(0, 0, ord as u64, &one(TERMS[ord]))
                    .unwrap();
                out.finish().unwrap().remove(0)
            })
            .collect();
        let schema = batches[0].schema();
        let source = MemorySourceConfig::try_new_exec(&[batches], schema, None).unwrap();
        let sum = BlockSumExec::single(source).unwrap();
        let got = value(&run(Arc::new(sum)).await);
        assert_eq!(
            got.to_bits(),
            IN_ORDER.to_bits(),
            "arrival {arrival:?}: {got}"
        );
    }
}

#[tokio::test]
async fn block_products_add_in_k_order_whatever_order_the_join_made_them() {
    // A(0, k) = TERMS[k], B(k, 0) = 1: the products are the terms, by k.
    let side = |k: usize, a: bool| {
        let mut out = BlockBatches::new();
        let (key, v) = if a {
            ((0, k as u64), TERMS[k])
        } else {
            ((k as u64, 0), 1.0)
        };
        out.push(key.0, key.1, &one(v)).unwrap();
        out.finish().unwrap().remove(0)
    };
    let a0 = side(0, true);
    let fields: Vec<Field> = a0
        .schema()
        .fields()
        .iter()
        .chain(a0.schema().fields().iter())
        .map(|f| f.as_ref().clone())
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let width = a0.num_columns();
    for arrival in ARRIVALS {
        let batches: Vec<RecordBatch> = arrival
            .iter()
            .map(|&k| {
                let columns: Vec<ArrayRef> = side(k, true)
                    .columns()
                    .iter()
                    .chain(side(k, false).columns())
                    .cloned()
                    .collect();
                RecordBatch::try_new(schema.clone(), columns).unwrap()
            })
            .collect();
        let source = MemorySourceConfig::try_new_exec(&[batches], schema.clone(), None).unwrap();
        let products = BlockProductExec::single(source, 0, width).unwrap();
        let out = run(Arc::new(products)).await;
        assert_eq!(
            value(&out).to_bits(),
            IN_ORDER.to_bits(),
            "arrival {arrival:?}"
        );
        // One partial, ordered by the first k it sums.
        let (_, ord) = partial_rows(&out[0]).unwrap();
        assert_eq!(ord.value(0), 0);
        assert_eq!(out[0].schema().field(out[0].num_columns() - 1).name(), ORD);
    }
}
