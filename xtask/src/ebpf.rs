//! `cargo xtask build-ebpf`: nightly + rust-src + bpf-linker, then the eBPF object.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{process, repo, step};

/// The bpf-linker release known to build against the nightly's LLVM (TOOLCHAIN.md).
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The eBPF crate and its target.
const EBPF_CRATE: &str = "metadataproxy-ebpf";
const TARGET: &str = "bpfel-unknown-none";

/// Builds the eBPF programs, installing the missing pieces of the toolchain first.
pub fn run() -> Result<()> {
    step("build-ebpf: nightly toolchain with rust-src");
    let has_nightly = Command::new("rustc")
        .args(["+nightly", "--version"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_nightly {
        // Only when missing: updating an existing nightly would change its LLVM under bpf-linker.
        process::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))
        .context("the eBPF build needs a nightly toolchain (rustup toolchain install nightly)")?;
    }
    process::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
    .context("the eBPF build needs `rustup toolchain install nightly` first")?;

    step("build-ebpf: bpf-linker");
    ensure_bpf_linker()?;

    step(&format!(
        "build-ebpf: cargo +nightly build ({TARGET}, release)"
    ));
    let crate_dir = repo::root().join(EBPF_CRATE);
    process::run(
        Command::new("cargo")
            .args(["+nightly", "build", "--package", EBPF_CRATE])
            .args(["--target", TARGET, "-Z", "build-std=core", "--release"])
            .current_dir(&crate_dir)
            // BTF in the object: the loader relocates against the kernel's BTF with it.
            .env(
                "CARGO_ENCODED_RUSTFLAGS",
                "-Cdebuginfo=2\x1f-Clink-arg=--btf",
            )
            // The `cargo` of the outer xtask run pins the stable toolchain; let rustup pick nightly.
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO")
            .env_remove("RUSTC"),
    )?;
    let object = repo::target_dir()?
        .join(TARGET)
        .join("release")
        .join(EBPF_CRATE);
    if !object.exists() {
        bail!("the build succeeded but {} is missing", object.display());
    }
    println!("eBPF object: {}", object.display());
    // The daemon's build script watches this object: the next daemon build embeds it if (and only
    // if) this build changed it.
    println!("the next `cargo build -p metadataproxy` embeds it (and rebuilds only if it changed)");
    Ok(())
}

/// Installs bpf-linker against the nightly's own LLVM unless it is already on PATH.
fn ensure_bpf_linker() -> Result<()> {
    if let Ok(out) = Command::new("bpf-linker").arg("--version").output()
        && out.status.success()
    {
        println!("found {}", String::from_utf8_lossy(&out.stdout).trim());
        return Ok(());
    }
    println!(
        "bpf-linker is missing; building it against the nightly toolchain's LLVM (about 2 min)"
    );
    let (llvm_lib, major) = nightly_llvm()?;
    let prefix = llvm_prefix()?;
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let file_name = llvm_lib
        .file_name()
        .context("LLVM library has no file name")?;
    for link in [lib.join("libLLVM.so"), lib.join(file_name)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm_lib, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), llvm_lib.display()))?;
    }
    println!(
        "LLVM_PREFIX={} (keep this folder: bpf-linker keeps an rpath to {})",
        prefix.display(),
        lib.display()
    );
    process::run(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO"),
    )
    .context("installing bpf-linker (needs crates.io and a C++ toolchain)")
}

/// The nightly's `libLLVM.so.<major>.<minor>-rust-…` and its major version.
fn nightly_llvm() -> Result<(PathBuf, String)> {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .context("running rustc +nightly --print sysroot")?;
    if !out.status.success() {
        bail!(
            "no nightly toolchain: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let lib = Path::new(String::from_utf8(out.stdout)?.trim()).join("lib");
    for entry in std::fs::read_dir(&lib).with_context(|| format!("listing {}", lib.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if let Some(version) = name.strip_prefix("libLLVM.so.")
            && let Some(major) = version.split('.').next()
            && major.chars().all(|c| c.is_ascii_digit())
        {
            return Ok((path.clone(), major.to_owned()));
        }
    }
    bail!("no libLLVM.so.<version> in {}", lib.display())
}

/// A stable home for the LLVM symlink folder: `$XDG_DATA_HOME` or `~/.local/share`.
fn llvm_prefix() -> Result<PathBuf> {
    let data = match std::env::var_os("XDG_DATA_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
            .join(".local")
            .join("share"),
    };
    Ok(data.join("metadataproxy").join("llvm"))
}
