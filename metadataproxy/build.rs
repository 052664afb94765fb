//! Embeds the eBPF object when `cargo xtask build-ebpf` has built it; the daemon still builds without.
//!
//! The object is looked up in the target directory (`<target>/bpfel-unknown-none/release/`).
//! `cargo xtask build-ebpf` touches this file after building, so the next daemon build embeds the
//! new object; without it the daemon says at start-up how to build it (or loads `EBPF_OBJECT`).

use std::path::{Path, PathBuf};

fn object_path(out_dir: &Path) -> Option<PathBuf> {
    // OUT_DIR is <target>/[<triple>/]<profile>/build/<package>-<hash>/out.
    out_dir
        .ancestors()
        .skip(4)
        .take(2)
        .map(|target| target.join("bpfel-unknown-none/release/metadataproxy-ebpf"))
        .find(|p| p.is_file())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo::rustc-check-cfg=cfg(metadataproxy_ebpf_object)");
    println!("cargo::rerun-if-changed=build.rs");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    if let Some(object) = object_path(&out_dir) {
        println!("cargo::rerun-if-changed={}", object.display());
        std::fs::copy(&object, out_dir.join("metadataproxy-ebpf.o"))?;
        println!("cargo::rustc-cfg=metadataproxy_ebpf_object");
    }
    Ok(())
}
