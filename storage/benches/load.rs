//! Loads files much larger than the load's memory budget and prints peak memory
//! against file size: the evidence that ingest streams in bounded memory.
//!
//! ```sh
//! TESSERA_LOAD_MB=2000 cargo bench -p tessera-storage --bench load
//! ```
//! `TESSERA_LOAD_MB` sets each generated file's size (default 1000 MB); files go to
//! `TMPDIR`. Peak memory is the process's high-water mark (VmHWM) after each load.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // a benchmark binary

use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use tessera_storage::io::FileFormat;
use tessera_storage::{ArraySchema, LoadOptions, Store};

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Shuffled `i,j,v` triples of an `n x n` matrix, about `mb` megabytes.
fn write_triples(path: &Path, mb: u64, n: u64) -> u64 {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    writeln!(out, "i,j,v").unwrap();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let (mut bytes, mut cells) = (0u64, 0u64);
    while bytes < mb << 20 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let (i, j) = (state % n, (state >> 32) % n);
        let line = format!("{i},{j},{}\n", (state >> 11) as f64 / (1u64 << 53) as f64);
        bytes += line.len() as u64;
        cells += 1;
        out.write_all(line.as_bytes()).unwrap();
    }
    out.flush().unwrap();
    cells
}

/// A C-order `.npy` of `rows x cols` f64, about `mb` megabytes.
fn write_npy(path: &Path, mb: u64, cols: u64) -> (u64, u64) {
    let rows = (mb << 20) / (cols * 8);
    let mut header =
        format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    out.write_all(b"\x93NUMPY\x01\x00").unwrap();
    out.write_all(&(header.len() as u16).to_le_bytes()).unwrap();
    out.write_all(header.as_bytes()).unwrap();
    let row: Vec<u8> = (0..cols)
        .flat_map(|c| (c as f64 + 0.5).to_le_bytes())
        .collect();
    for _ in 0..rows {
        out.write_all(&row).unwrap();
    }
    out.flush().unwrap();
    (rows, cols)
}

fn main() {
    let mb: u64 = std::env::var("TESSERA_LOAD_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let tmp = std::env::temp_dir().join(format!("tessera-load-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    println!("command: TESSERA_LOAD_MB={mb} cargo bench -p tessera-storage --bench load");
    println!(
        "{:<34} {:>10} {:>12} {:>9} {:>9} {:>14}",
        "file", "file MB", "cells", "seconds", "MB/s", "peak RSS MB"
    );

    let store = Store::open_dir(tmp.join("data")).unwrap();
    let budget = 64 << 20;
    let opts = LoadOptions {
        memory_budget: budget,
        ..LoadOptions::default()
    };

    let csv = tmp.join("triples.csv");
    let n = 200_000;
    let cells = write_triples(&csv, mb, n);
    let size = std::fs::metadata(&csv).unwrap().len() as f64 / (1 << 20) as f64;
    store
        .create_array(
            "t",
            ArraySchema::matrix(n, n, 10_000, 10_000).unwrap(),
            None,
            None,
        )
        .unwrap();
    let start = Instant::now();
    store.load("t", &csv, FileFormat::Csv, &opts).unwrap();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{:<34} {size:>10.0} {cells:>12} {secs:>9.1} {:>9.0} {:>14.0}",
        "shuffled i,j,v CSV (64 MiB budget)",
        size / secs,
        peak_rss_mb()
    );
    std::fs::remove_file(&csv).unwrap();
    store.drop_array("t").unwrap();

    let npy = tmp.join("dense.npy");
    let (rows, cols) = write_npy(&npy, mb, 100);
    let size = std::fs::metadata(&npy).unwrap().len() as f64 / (1 << 20) as f64;
    store
        .create_array(
            "d",
            ArraySchema::matrix(rows, cols, 10_000, 100).unwrap(),
            None,
            None,
        )
        .unwrap();
    let start = Instant::now();
    store.load("d", &npy, FileFormat::Npy, &opts).unwrap();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{:<34} {size:>10.0} {:>12} {secs:>9.1} {:>9.0} {:>14.0}",
        "C-order .npy, 100 columns",
        rows * cols,
        size / secs,
        peak_rss_mb()
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&tmp);
}
