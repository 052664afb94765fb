//! `cargo xtask fuzz`: runs each cargo-fuzz target in `fuzz/` for a bounded time on its committed
//! corpus and prints how many inputs each tried; `--cmin` minimises the corpora afterwards.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::process;
use crate::repo;

/// One target's run.
#[derive(Debug)]
struct Outcome {
    target: String,
    seconds: u64,
    executions: u64,
}

/// Runs `targets` (all when empty) for `seconds` each; minimises the corpora when `cmin`.
pub fn run(seconds: u64, cmin: bool, targets: &[String]) -> Result<()> {
    let fuzz = repo::root().join("fuzz");
    ensure_cargo_fuzz()?;
    let all = all_targets(&fuzz)?;
    let chosen: Vec<String> = if targets.is_empty() {
        all
    } else {
        for t in targets {
            if !all.contains(t) {
                bail!("no fuzz target {t:?}; the targets are: {}", all.join(", "));
            }
        }
        targets.to_vec()
    };
    crate::step("building the fuzz targets (nightly, sanitizer)");
    process::run(
        Command::new("cargo")
            .args(["+nightly", "fuzz", "build", "-O"])
            .current_dir(&fuzz),
    )?;
    let mut outcomes = Vec::new();
    for target in &chosen {
        crate::step(&format!("fuzzing {target} for {seconds} s"));
        outcomes.push(run_one(&fuzz, target, seconds)?);
        if cmin {
            process::run(
                Command::new("cargo")
                    .args(["+nightly", "fuzz", "cmin", "-O", target])
                    // The smallest set of inputs that keeps every feature the corpus reaches
                    // (libFuzzer's set-cover merge; the default merge keeps far more).
                    .args(["--", "-set_cover_merge=1"])
                    .current_dir(&fuzz),
            )?;
        }
    }
    println!("\n| target | seconds | executions | exec/s | corpus files |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for o in &outcomes {
        println!(
            "| `{}` | {} | {} | {} | {} |",
            o.target,
            o.seconds,
            o.executions,
            o.executions / o.seconds.max(1),
            corpus_len(&fuzz, &o.target)
        );
    }
    let total: u64 = outcomes.iter().map(|o| o.executions).sum();
    println!("\ntotal: {total} executions, no failure");
    Ok(())
}

fn run_one(fuzz: &Path, target: &str, seconds: u64) -> Result<Outcome> {
    let log = fuzz.join("target").join(format!("xtask-fuzz-{target}.log"));
    std::fs::create_dir_all(log.parent().context("log dir")?)?;
    let file = std::fs::File::create(&log).with_context(|| log.display().to_string())?;
    let mut cmd = Command::new("cargo");
    cmd.args(["+nightly", "fuzz", "run", "-O", target])
        .arg(fuzz.join("corpus").join(target))
        .args([
            "--",
            &format!("-max_total_time={seconds}"),
            "-print_final_stats=1",
            "-timeout=10",
            "-rss_limit_mb=2048",
        ])
        .current_dir(fuzz)
        .stdout(Stdio::null())
        .stderr(file);
    println!("$ {}   (log: {})", process::describe(&cmd), log.display());
    let status = cmd.status().context("starting cargo fuzz run")?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "fuzz target {target} failed ({status}); the input is in fuzz/artifacts/{target}/ \
             (reproduce: cd fuzz && cargo +nightly fuzz run -O {target} <file>; fix it, then copy \
             the file to fuzz/regressions/{target}/ and add a regression test named after it):\n{}",
            tail.join("\n")
        );
    }
    let executions = stat(&text, "stat::number_of_executed_units:")
        .with_context(|| format!("no execution count in {}", log.display()))?;
    Ok(Outcome {
        target: target.to_owned(),
        seconds,
        executions,
    })
}

/// The value of a libFuzzer `-print_final_stats` line.
fn stat(log: &str, key: &str) -> Option<u64> {
    log.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
}

fn corpus_len(fuzz: &Path, target: &str) -> usize {
    std::fs::read_dir(fuzz.join("corpus").join(target)).map_or(0, Iterator::count)
}

/// The targets: `fuzz/fuzz_targets/<name>.rs`.
fn all_targets(fuzz: &Path) -> Result<Vec<String>> {
    let dir: PathBuf = fuzz.join("fuzz_targets");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| dir.display().to_string())?
        .filter_map(|e| {
            let path = e.ok()?.path();
            (path.extension()? == "rs").then(|| path.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    names.sort();
    Ok(names)
}

/// cargo-fuzz and the nightly toolchain, installed when missing.
fn ensure_cargo_fuzz() -> Result<()> {
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !nightly {
        process::run(Command::new("rustup").args(["toolchain", "install", "nightly"]))?;
    }
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        process::run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}
