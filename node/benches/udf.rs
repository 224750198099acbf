//! WASM UDF cost: `celsius_to_f` over 10M rows as the udf-sdk example component against the
//! same function as a native DataFusion UDF, in the same run; plus the compile and first-call
//! latencies a user sees. Prints a Markdown report (goal: ratio ≤ 1.5).
//!
//!   cargo build -p apiary-udf --examples --target wasm32-wasip2 --release
//!   cargo bench --bench udf            (or scripts/bench, which does both)

use std::sync::Arc;
use std::time::{Duration, Instant};

use apiary::Apiary;
use apiary::config::Config;
use arrow::array::{ArrayRef, Float64Array};
use arrow::datatypes::{DataType, Field, Float64Type};
use datafusion::config::ConfigOptions;
use datafusion::execution::memory_pool::UnboundedMemoryPool;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, Volatility, create_udf,
};
use datafusion::prelude::SessionContext;

const ROWS: usize = 10_000_000;
const BATCH: usize = 8192;
const RUNS: usize = 5;

fn native() -> ScalarUDF {
    create_udf(
        "c2f_native",
        vec![DataType::Float64],
        DataType::Float64,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let a = args[0].to_array(1)?;
            let out: Float64Array = arrow::compute::unary::<Float64Type, _, Float64Type>(
                a.as_any().downcast_ref::<Float64Array>().unwrap(),
                |c| c * 9.0 / 5.0 + 32.0,
            );
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    )
}

/// Call `udf` on every batch, as DataFusion's projection would.
fn run(udf: &ScalarUDF, batches: &[ArrayRef]) -> Duration {
    let arg = Arc::new(Field::new("c", DataType::Float64, true));
    let ret = Arc::new(Field::new("f", DataType::Float64, true));
    let options = Arc::new(ConfigOptions::new());
    let t = Instant::now();
    for b in batches {
        let out = udf
            .invoke_with_args(ScalarFunctionArgs {
                args: vec![ColumnarValue::Array(b.clone())],
                arg_fields: vec![arg.clone()],
                number_rows: b.len(),
                return_field: ret.clone(),
                config_options: options.clone(),
            })
            .unwrap();
        std::hint::black_box(out);
    }
    t.elapsed()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn open(dir: &std::path::Path, node: &str) -> Apiary {
    let mut config = Config::default();
    config.node.state_dir = dir.join(node);
    config.meadow.uri = Some(dir.join("meadow").display().to_string());
    Apiary::open(config).await.unwrap()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let exe = std::env::current_exe().unwrap();
    let wasm_path = exe
        .ancestors()
        .nth(3)
        .unwrap()
        .join("wasm32-wasip2/release/examples/celsius_to_f.wasm");
    let wasm = std::fs::read(&wasm_path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the examples first: cargo build -p apiary-udf --examples --target wasm32-wasip2 --release",
            wasm_path.display()
        )
    });
    let dir = tempfile::tempdir().unwrap();

    // Upload on node A: validate = compile + instantiate + describe, then store.
    let a = open(dir.path(), "a").await;
    let t = Instant::now();
    let manifest = a
        .udfs()
        .add("celsius_to_f", wasm.clone().into(), false)
        .await
        .unwrap();
    let upload = t.elapsed();

    // Node B has nothing compiled: its first call fetches, compiles and instantiates.
    let b = open(dir.path(), "b").await;
    let q = "SELECT celsius_to_f(21.5)";
    let t = Instant::now();
    b.sql(q).await.unwrap();
    let first_cold = t.elapsed();
    let t = Instant::now();
    b.sql(q).await.unwrap();
    let first_warm = t.elapsed();
    let t = Instant::now();
    b.sql("SELECT 21.5 * 9.0 / 5.0 + 32.0").await.unwrap();
    let plain = t.elapsed();
    // Node C restarts on B's disk cache: no compile, only a load.
    drop(b);
    let c = open(dir.path(), "b").await;
    let t = Instant::now();
    c.sql(q).await.unwrap();
    let first_cached = t.elapsed();

    let wasm_udf = a
        .udfs()
        .scalar(
            &manifest,
            Arc::new(UnboundedMemoryPool::default()),
            Instant::now() + Duration::from_secs(3600),
        )
        .await
        .unwrap();
    let native_udf = native();
    let batches: Vec<ArrayRef> = (0..ROWS.div_ceil(BATCH))
        .map(|i| {
            let n = BATCH.min(ROWS - i * BATCH);
            Arc::new(Float64Array::from_iter_values(
                (0..n).map(|j| ((i * BATCH + j) % 1000) as f64 / 10.0 - 40.0),
            )) as ArrayRef
        })
        .collect();
    run(&wasm_udf, &batches[..10]);
    run(&native_udf, &batches[..10]);
    let (mut w, mut n) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        w.push(run(&wasm_udf, &batches));
        n.push(run(&native_udf, &batches));
    }
    w.sort();
    n.sort();
    let (w, n) = (w[RUNS / 2], n[RUNS / 2]);

    // The same inside a query: generate, cast, call, sum.
    let ctx = SessionContext::new();
    ctx.register_udf(wasm_udf.clone());
    ctx.register_udf(native_udf.clone());
    let query =
        |f: &str| format!("SELECT sum({f}(CAST(value AS DOUBLE))) FROM generate_series(1, {ROWS})");
    let (mut qw, mut qn) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        for (f, into) in [("celsius_to_f", &mut qw), ("c2f_native", &mut qn)] {
            let t = Instant::now();
            ctx.sql(&query(f)).await.unwrap().collect().await.unwrap();
            into.push(t.elapsed());
        }
    }
    qw.sort();
    qn.sort();
    let (qw, qn) = (qw[RUNS / 2], qn[RUNS / 2]);

    println!("## udf: celsius_to_f as a WASM component vs a native DataFusion UDF");
    println!();
    println!("| measure | WASM | native | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| function over {ROWS} rows ({BATCH}-row batches), median of {RUNS} | {} | {} | {:.2}× |",
        ms(w),
        ms(n),
        w.as_secs_f64() / n.as_secs_f64()
    );
    println!(
        "| `SELECT sum(f(CAST(value AS DOUBLE))) FROM generate_series(1, {ROWS})` | {} | {} | {:.2}× |",
        ms(qw),
        ms(qn),
        qw.as_secs_f64() / qn.as_secs_f64()
    );
    println!();
    println!("| latency | time |");
    println!("|---|---|");
    println!(
        "| upload (`udf add`: compile, instantiate, describe, store; {} KiB) | {} |",
        wasm.len() / 1024,
        ms(upload)
    );
    println!(
        "| first call on another node (fetch, compile, instantiate, call) | {} |",
        ms(first_cold)
    );
    println!(
        "| first call after a restart (compiled artifact from the disk cache) | {} |",
        ms(first_cached)
    );
    println!(
        "| a later one-row query (instantiate, call) | {} |",
        ms(first_warm)
    );
    println!("| the same query without a UDF | {} |", ms(plain));
    println!();
    println!(
        "Goal: function ratio ≤ 1.5×: {}",
        if w.as_secs_f64() / n.as_secs_f64() <= 1.5 {
            "met"
        } else {
            "NOT met"
        }
    );
}
