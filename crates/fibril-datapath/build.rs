//! Compiles every `bpf/*.c` with the system clang into OUT_DIR; the objects
//! are embedded with `aya::include_bytes_aligned!` (see `src/objects.rs`).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let bpf_dir = manifest.join("../../bpf");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default());
    println!("cargo:rerun-if-changed={}", bpf_dir.display());
    println!("cargo:rerun-if-changed={}", bpf_dir.join("lib").display());
    println!("cargo:rerun-if-env-changed=FIBRIL_CLANG");

    let clang = env::var("FIBRIL_CLANG").unwrap_or_else(|_| "clang".to_string());
    let mut sources: Vec<PathBuf> = match std::fs::read_dir(&bpf_dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "c"))
            .collect(),
        Err(e) => panic!("fibril-datapath: cannot read {}: {e}", bpf_dir.display()),
    };
    sources.sort();
    if let Ok(rd) = std::fs::read_dir(bpf_dir.join("lib")) {
        for e in rd.flatten() {
            println!("cargo:rerun-if-changed={}", e.path().display());
        }
    }
    for src in &sources {
        println!("cargo:rerun-if-changed={}", src.display());
        compile(&clang, src, &out_dir);
    }
}

fn compile(clang: &str, src: &Path, out_dir: &Path) {
    let stem = src.file_stem().and_then(|s| s.to_str()).unwrap_or("prog");
    let out = out_dir.join(format!("{stem}.o"));
    let status = Command::new(clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .arg("-I/usr/include/x86_64-linux-gnu")
        .arg("-c")
        .arg(src)
        .arg("-o")
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "fibril-datapath: clang failed ({s}) compiling {}; see the errors above",
            src.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "fibril-datapath: `{clang}` not found: the eBPF programs need clang and \
             libbpf-dev. Run `make setup` (or set FIBRIL_CLANG to a clang binary)."
        ),
        Err(e) => panic!("fibril-datapath: cannot run `{clang}`: {e}"),
    }
}
