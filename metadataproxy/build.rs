//! Embeds the eBPF object when `cargo xtask build-ebpf` has built it; the daemon still builds without.
//!
//! The object is looked up in the target directory (`<target>/bpfel-unknown-none/release/`).
//! The daemon is rebuilt exactly when that object changes (cargo rewrites it only when the eBPF
//! sources changed), never on every `build-ebpf`. While it does not exist, the folder it will
//! appear in is watched instead, so the first `build-ebpf` is picked up without touching anything.
//! A warning says so when the eBPF sources are newer than the object (`build-ebpf` not rerun).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

const OBJECT: &str = "metadataproxy-ebpf";

/// `<target>/bpfel-unknown-none/release`, from `OUT_DIR` (`<target>/[<triple>/]<profile>/build/<pkg>-<hash>/out`).
fn ebpf_dir(out_dir: &Path) -> Option<PathBuf> {
    let mut target = out_dir.ancestors().nth(4)?;
    let triple = std::env::var("TARGET").unwrap_or_default();
    if target.file_name().is_some_and(|n| *n == *triple) {
        target = target.parent()?;
    }
    Some(target.join("bpfel-unknown-none").join("release"))
}

/// The newest modification time of the files below `dir`.
fn newest(dir: &Path) -> Option<SystemTime> {
    let mut latest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            newest(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        latest = latest.max(time);
    }
    latest
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo::rustc-check-cfg=cfg(metadataproxy_ebpf_object)");
    println!("cargo::rerun-if-changed=build.rs");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let Some(dir) = ebpf_dir(&out_dir) else {
        return Ok(());
    };
    let object = dir.join(OBJECT);
    if object.is_file() {
        println!("cargo::rerun-if-changed={}", object.display());
        std::fs::copy(&object, out_dir.join("metadataproxy-ebpf.o"))?;
        println!("cargo::rustc-cfg=metadataproxy_ebpf_object");
        let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
        let workspace = manifest.parent().unwrap_or(&manifest);
        // A change here reruns this script (and warns) before `build-ebpf` has run again.
        let sources = ["metadataproxy-ebpf", "metadataproxy-common"].map(|c| workspace.join(c));
        for source in &sources {
            println!("cargo::rerun-if-changed={}", source.join("src").display());
        }
        let built = std::fs::metadata(&object)?.modified()?;
        if sources
            .iter()
            .filter_map(|s| newest(&s.join("src")))
            .any(|t| t > built)
        {
            println!(
                "cargo::warning=the eBPF sources changed after {} was built: run `cargo xtask build-ebpf` (this build embeds the old object)",
                object.display()
            );
        }
    } else {
        // A missing path would rerun this script on every build; an empty folder dated in the
        // past is only "changed" once the eBPF build writes into it.
        std::fs::create_dir_all(&dir)?;
        std::fs::File::open(&dir)?.set_modified(SystemTime::UNIX_EPOCH)?;
        println!("cargo::rerun-if-changed={}", dir.display());
    }
    Ok(())
}
