//! Generates one test per `slt/*.slt` file and database kind (in memory, on disk), so a
//! new `.slt` file is a new test without touching Rust code.

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=slt");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let dir = manifest.join("slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "slt"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut code = String::new();
    for file in files {
        let stem = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name: String = stem
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        for (suffix, on_disk) in [("in_memory", false), ("on_disk", true)] {
            let _ = writeln!(
                code,
                // The path from the manifest directory the test crate is compiled in, not
                // this script's: a build cache shared by clones at other paths reuses the
                // generated file.
                "#[test]\nfn {name}_{suffix}() {{\n    crate::slt::run_file(concat!(env!(\"CARGO_MANIFEST_DIR\"), \"/slt/\", {:?}), {on_disk});\n}}\n",
                file.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            );
        }
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join("slt_tests.rs");
    if let Err(e) = std::fs::write(&out, code) {
        println!("cargo:warning=cannot write {}: {e}", out.display());
    }
}
