//! `cargo xtask mutants [FILE…]`: mutation testing of the security-critical code with
//! `cargo-mutants` (installed when missing), then a table of caught and missed mutants per file.
//!
//! Not part of CI (a run takes from minutes to an hour or more): run it after changing the files it
//! covers. Mutants known to be equivalent (no test can tell them from the original) are excluded in
//! `.cargo/mutants.toml`, each with the reason next to it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{process, repo, step};

/// The version installed when cargo-mutants is missing (its output files are what we read).
const CARGO_MUTANTS: &str = "27.1.0";

/// What is mutated by default: where a caller is identified and bound, where the kernel's records
/// are read, what the router lets through, and the `IMDSv2` token store.
pub const DEFAULT_FILES: &[&str] = &[
    "metadataproxy/src/identity/*.rs",
    "metadataproxy/src/identity/**/*.rs",
    "metadataproxy/src/ebpf/table.rs",
    "metadataproxy/src/ebpf/exempt.rs",
    "metadataproxy/src/imds/path.rs",
    "metadataproxy/src/imds/token.rs",
    "metadataproxy/src/imds/conn.rs",
    "metadataproxy/src/docker/identify.rs",
    "metadataproxy/src/containerd/identify.rs",
];

/// Runs cargo-mutants over `files` (globs, relative to the repository; default [`DEFAULT_FILES`])
/// with the daemon's unit tests plus `test_args`, and prints the outcome per file.
pub fn run(files: &[String], test_args: &[String]) -> Result<()> {
    ensure_installed()?;
    let root = repo::root();
    let files: Vec<String> = if files.is_empty() {
        DEFAULT_FILES.iter().map(|f| (*f).to_owned()).collect()
    } else {
        files.to_vec()
    };
    let out = repo::target_dir()?.join("mutants");
    step(&format!("mutants: {}", files.join(" ")));
    let mut cmd = Command::new(repo::cargo());
    cmd.args(["mutants", "--package", "metadataproxy", "--no-shuffle"])
        // The build directory starts from a copy of target/: only the daemon's crate rebuilds.
        .args(["--copy-target", "true", "--jobs", "1"])
        .arg("--output")
        .arg(&out);
    for f in &files {
        cmd.args(["--file", f]);
    }
    // The unit tests of the daemon's library by default; more (e.g. `--test NAME`) if asked.
    cmd.arg("--");
    if test_args.is_empty() {
        cmd.arg("--lib");
    } else {
        cmd.args(test_args);
    }
    // cargo-mutants exits non-zero when a mutant is missed; the table below says which.
    let status = cmd
        .current_dir(&root)
        .status()
        .context("running cargo mutants")?;
    let summary = summarise(&out.join("mutants.out"))?;
    print!("{summary}");
    if !status.success() {
        bail!("cargo mutants reported missed or timed-out mutants, or a failing baseline (above)");
    }
    Ok(())
}

fn ensure_installed() -> Result<()> {
    let installed = Command::new(repo::cargo())
        .args(["mutants", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if installed {
        return Ok(());
    }
    step(&format!("installing cargo-mutants {CARGO_MUTANTS}"));
    process::run(Command::new(repo::cargo()).args([
        "install",
        "--locked",
        "cargo-mutants",
        "--version",
        CARGO_MUTANTS,
    ]))
}

/// Per-file counts from cargo-mutants' `caught.txt`, `missed.txt`, `timeout.txt` and
/// `unviable.txt` (one mutant per line, `path:line:col: description`), then the missed ones.
fn summarise(dir: &Path) -> Result<String> {
    const KINDS: [&str; 4] = ["caught", "missed", "timeout", "unviable"];
    let mut table: BTreeMap<String, [usize; 4]> = BTreeMap::new();
    let mut missed = Vec::new();
    for (k, kind) in KINDS.iter().enumerate() {
        let path = dir.join(format!("{kind}.txt"));
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let file = line.split(':').next().unwrap_or(line).to_owned();
            table.entry(file).or_default()[k] += 1;
            if matches!(*kind, "missed" | "timeout") {
                missed.push(format!("{kind}: {line}"));
            }
        }
    }
    let mut s = String::from("\n| file | caught | missed | timeout | unviable |\n");
    s.push_str("| --- | ---: | ---: | ---: | ---: |\n");
    for (file, [caught, miss, timeout, unviable]) in &table {
        let _ = writeln!(
            s,
            "| `{file}` | {caught} | {miss} | {timeout} | {unviable} |"
        );
    }
    if !missed.is_empty() {
        s.push('\n');
        for m in &missed {
            s.push_str(m);
            s.push('\n');
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_kind_per_file_and_lists_the_missed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write(
            "caught.txt",
            "a.rs:1:1: replace f -> bool with true\na.rs:2:1: x\nb.rs:3:1: y\n",
        );
        write("missed.txt", "a.rs:9:5: replace == with !=\n");
        write("unviable.txt", "b.rs:4:1: z\n");
        let s = summarise(dir.path()).expect("summary");
        assert!(s.contains("| `a.rs` | 2 | 1 | 0 | 0 |"), "{s}");
        assert!(s.contains("| `b.rs` | 1 | 0 | 0 | 1 |"), "{s}");
        assert!(s.contains("missed: a.rs:9:5: replace == with !="), "{s}");
        assert!(!s.contains("timeout:"), "{s}");
    }
}
