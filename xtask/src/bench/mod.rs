//! `cargo xtask bench`: our daemon against Lyft's metadataproxy and a bare hyper server, side by side
//! (and, with `--baseline`, against an earlier build of itself).

pub mod bare;
mod baseline;
pub(crate) mod client;
mod coldstart;
mod ebpf_path;
mod instructions;
mod loadgen;
mod lyft;
mod machine;
mod many;
mod moto;
mod proc;
mod report;
mod scale;
mod scenarios;
mod servers;
mod stats;
mod throttle;
mod wrk;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use self::client::once;
use self::machine::Machine;
use self::moto::Moto;
use self::report::Results;
use self::scenarios::Plan;
use self::servers::{CREDS_PATH, Kind, Programs, ROLE, Server};
use crate::{process, repo, setup, step};

/// How much to measure.
#[derive(Debug, Clone, Copy)]
struct Size {
    plan: Plan,
    cold_ours: usize,
    cold_lyft: usize,
    callers: usize,
    added_callers: usize,
    /// Rounds of the eBPF path, each way (alternating which goes first).
    ebpf_rounds: usize,
    /// The scale scenarios (issue 15).
    scale: scale::Size,
    /// Sequences counted under callgrind, per server and sequence.
    instructions: usize,
    /// Callers holding credentials and new callers while STS throttles (issue 15).
    throttle: throttle::Size,
}

/// Many short rounds rather than a few long ones: on a shared machine the load drifts over
/// seconds, and servers measured seconds apart in one round compare more fairly than servers
/// measured tens of seconds apart; the median of 9 same-round ratios is less at the mercy of
/// one odd round than that of 5.
const FULL: Size = Size {
    plan: Plan {
        rounds: 9,
        duration: Duration::from_secs(3),
    },
    cold_ours: 5,
    cold_lyft: 3,
    callers: 1000,
    added_callers: 20,
    ebpf_rounds: 5,
    scale: scale::FULL,
    instructions: 2000,
    throttle: throttle::FULL,
};

/// A smoke run: everything runs once, briefly (CI checks it works, never how fast).
const QUICK: Size = Size {
    plan: Plan {
        rounds: 1,
        duration: Duration::from_secs(1),
    },
    cold_ours: 1,
    cold_lyft: 1,
    callers: 50,
    added_callers: 3,
    ebpf_rounds: 1,
    scale: scale::QUICK,
    instructions: 100,
    throttle: throttle::QUICK,
};

/// Runs the benchmark; `quick` for the short smoke version; `scale_only`, only the scale scenarios;
/// `baseline`, an earlier build of the daemon to measure beside ours. Fails only when something
/// could not run.
///
/// `cargo xtask` is a debug build; the load generator and the bare server must not be slowed by that
/// (they share the cores with the server under test), so a debug build re-runs itself in release.
pub fn run(quick: bool, scale_only: bool, baseline: Option<&Path>) -> Result<()> {
    let ours_bin = repo::target_dir()?.join("release").join("metadataproxy");
    // Checked before anything is built: a wrong path fails at once.
    let baseline = baseline
        .map(|path| baseline::validate(path, &ours_bin))
        .transpose()?;
    if cfg!(debug_assertions) {
        return rerun_in_release(quick, scale_only, baseline.as_deref());
    }
    let size = if quick { QUICK } else { FULL };
    let command = command_line(quick, scale_only, baseline.as_deref());
    if scale_only {
        return run_scale(quick, size.scale, &command);
    }
    let machine = Machine::describe();
    println!(
        "{} CPUs ({}), kernel {}, load average {}",
        machine.cpus, machine.model, machine.kernel, machine.load_at_start
    );
    let venv = setup::run()?;
    match ebpf_path::why_not() {
        // The daemon embeds the eBPF object only when it was built first.
        None => crate::ebpf::run()?,
        Some(why) => println!("the eBPF path will not be measured: {why}"),
    }
    step("build: cargo build --release -p metadataproxy");
    process::run(
        Command::new(repo::cargo())
            .args(["build", "--release", "-p", "metadataproxy"])
            .current_dir(repo::root()),
    )?;
    let baseline = match baseline {
        Some(path) => {
            let b = baseline::probe(path, &ours_bin)?;
            println!("baseline: {} ({})", b.path.display(), b.version);
            Some(b)
        }
        None => None,
    };
    let target = repo::target_dir()?;
    let bench_dir = target.join("bench");
    step("Lyft's metadataproxy 2.2.0 and wrk");
    let lyft_venv = lyft::ensure_venv(&bench_dir.join("lyft-venv"))?;
    let work = bench_dir.join(if quick { "run-quick" } else { "run" });
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let load_tool = wrk::Wrk::prepare(&work)?;
    println!("logs and mapping files: {}", work.display());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let programs = Programs {
        daemon: ours_bin,
        lyft_venv,
        xtask: std::env::current_exe()?,
        moto: String::new(),
        dir: work.clone(),
        baseline,
    };
    let results = runtime.block_on(measure(
        &venv,
        programs,
        size,
        &load_tool,
        (machine, &command),
    ))?;

    step("results");
    println!(
        "{}\n{}\n{}",
        results.table(),
        results.other_table(),
        results.targets_table()
    );
    if let Some(line) = results.baseline_ebpf_line() {
        println!("{line}\n");
    }
    let out = if quick {
        bench_dir.join("BENCHMARKS-quick.md")
    } else {
        repo::root().join("BENCHMARKS.md")
    };
    let notes = kept_notes(&repo::root().join("BENCHMARKS.md"));
    std::fs::write(&out, results.markdown(&notes))
        .with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {}", out.display());
    failures(&results)
}

/// `--scale`: moto, the daemon, and only the scale scenarios; the report goes to
/// `target/bench/BENCHMARKS-scale.md` (`BENCHMARKS-scale-quick.md` with `--quick`).
fn run_scale(quick: bool, size: scale::Size, command: &str) -> Result<()> {
    let machine = Machine::describe();
    println!(
        "{} CPUs ({}), kernel {}, load average {}",
        machine.cpus, machine.model, machine.kernel, machine.load_at_start
    );
    let venv = setup::run()?;
    step("build: cargo build --release -p metadataproxy");
    process::run(
        Command::new(repo::cargo())
            .args(["build", "--release", "-p", "metadataproxy"])
            .current_dir(repo::root()),
    )?;
    let bench_dir = repo::target_dir()?.join("bench");
    let work = bench_dir.join(if quick { "scale-quick" } else { "scale" });
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    println!("logs: {}", work.display());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let section = runtime.block_on(async {
        let mut moto = Moto::start(&venv, &work)?;
        let programs = Programs {
            daemon: repo::target_dir()?.join("release").join("metadataproxy"),
            lyft_venv: std::path::PathBuf::new(),
            xtask: std::env::current_exe()?,
            moto: moto.endpoint(),
            dir: work.clone(),
            baseline: None,
        };
        let scale = scale::run(&programs, &moto, size).await?;
        moto.check_running()?;
        anyhow::Ok(scale.markdown())
    })?;
    let text = format!(
        "# Benchmarks: scale scenarios only\n\nRegenerate with:\n\n```sh\n{command}\n```\n\n\
         {} CPUs ({}), kernel {}, memory {}, load average at start {}, taken {}.\n\n{section}",
        machine.cpus,
        machine.model,
        machine.kernel,
        machine.memory,
        machine.load_at_start,
        machine.date
    );
    step("results");
    println!("{section}");
    let out = bench_dir.join(if quick {
        "BENCHMARKS-scale-quick.md"
    } else {
        "BENCHMARKS-scale.md"
    });
    std::fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}

/// Builds the release xtask and runs this same bench with it.
fn rerun_in_release(quick: bool, scale_only: bool, baseline: Option<&Path>) -> Result<()> {
    step("build: cargo build --release -p xtask (the load generator and the bare server)");
    process::run(
        Command::new(repo::cargo())
            .args(["build", "--release", "-p", "xtask"])
            .current_dir(repo::root()),
    )?;
    let release = repo::target_dir()?.join("release").join("xtask");
    let mut cmd = Command::new(release);
    cmd.arg("bench").current_dir(repo::root());
    if quick {
        cmd.arg("--quick");
    }
    if scale_only {
        cmd.arg("--scale");
    }
    if let Some(path) = baseline {
        // Absolute already: the release run works in the repository's root.
        cmd.arg("--baseline").arg(path);
    }
    process::run(&mut cmd)
}

/// The command that regenerates this run's figures, for the report.
fn command_line(quick: bool, scale_only: bool, baseline: Option<&Path>) -> String {
    let mut command = String::from("cargo xtask bench");
    if quick {
        command.push_str(" --quick");
    }
    if scale_only {
        command.push_str(" --scale");
    }
    if let Some(path) = baseline {
        command.push_str(" --baseline ");
        command.push_str(&path.display().to_string());
    }
    command
}

/// Everything measured, in order; every process is stopped before this returns.
async fn measure(
    venv: &Path,
    mut programs: Programs,
    size: Size,
    wrk: &wrk::Wrk,
    (machine, command): (Machine, &str),
) -> Result<Results> {
    step("moto_server (STS and IAM) on loopback");
    let mut moto = Moto::start(venv, &programs.dir)?;
    programs.moto = moto.endpoint();
    moto.create_roles(&[ROLE.to_owned()]).await?;
    let mapping = programs.dir.join("mapping.json");
    std::fs::write(&mapping, format!(r#"{{"127.0.0.1": "{ROLE}"}}"#))?;
    let body = programs.dir.join("credentials.json");

    step("servers under test");
    let ours = programs.start(Kind::Ours, "ours", &mapping, &body)?;
    let document = verify(&ours, &moto, "prefetched at start").await?;
    std::fs::write(&body, &document)?;
    let lyft = programs.start(Kind::Lyft, "lyft", &mapping, &body)?;
    verify(&lyft, &moto, "fetched on the first request").await?;
    let bare = programs.start(Kind::Bare, "bare-hyper", &mapping, &body)?;
    verify(&bare, &moto, "none").await?;
    let mut servers = vec![ours, lyft, bare];
    let mut baseline = None;
    if let Some(b) = &programs.baseline {
        let theirs = programs.start(Kind::Baseline, "baseline", &mapping, &body)?;
        verify(&theirs, &moto, "prefetched at start").await?;
        baseline = Some(report::BaselineRun {
            baseline: b.clone(),
            left_out: theirs.left_out.clone(),
        });
        servers.insert(1, theirs);
    }
    let rss_idle = servers
        .iter()
        .map(|s| {
            Ok((
                s.kind,
                s.proc.rss_kib()?,
                s.proc.rss_anon_kib()?,
                s.proc.process_count(),
            ))
        })
        .collect::<Result<Vec<_>>>()?;

    step("load: every scenario, servers interleaved");
    let measured = scenarios::run(&servers, wrk, &moto, size.plan).await?;
    let rss_loaded = servers
        .iter()
        .map(|s| Ok((s.kind, s.proc.rss_kib()?)))
        .collect::<Result<Vec<_>>>()?;
    drop(servers);

    step("instructions per request: each server under callgrind, the same client");
    let mut counted = vec![Kind::Ours, Kind::Bare];
    if programs.baseline.is_some() {
        counted.insert(1, Kind::Baseline);
    }
    let instructions =
        instructions::measure(&programs, &counted, &mapping, &body, size.instructions).await?;

    step("eBPF path: new connections through the redirect vs straight to the daemon");
    let ebpf = ebpf_path::measure(&programs, &body, size.ebpf_rounds, size.plan.duration).await?;

    step("cold start: spawn to first credentials");
    let cold = vec![
        (
            Kind::Ours,
            coldstart::measure(&programs, Kind::Ours, size.cold_ours, &mapping, &body).await?,
        ),
        (
            Kind::Lyft,
            coldstart::measure(&programs, Kind::Lyft, size.cold_lyft, &mapping, &body).await?,
        ),
    ];

    step(&format!(
        "many callers: {} source IPs → {} roles",
        size.callers, size.callers
    ));
    let many = many::run(&programs, &moto, size.callers, size.added_callers, &body).await?;
    moto.check_running()?;
    step(
        "when STS throttles: callers holding credentials and new callers, STS behind a throttling relay",
    );
    let throttle = throttle::run(&programs, &moto, size.throttle).await?;
    moto.check_running()?;
    let scale = scale::run(&programs, &moto, size.scale).await?;
    moto.check_running()?;

    Ok(Results {
        baseline,
        machine,
        load_at_end: machine::load_average(),
        command: command.to_owned(),
        plan: size.plan,
        measured,
        rss_idle,
        rss_loaded,
        cold,
        many,
        ebpf,
        scale,
        instructions,
        throttle,
    })
}

/// One credentials request: it must succeed, and only Lyft may call STS for it (ours prefetched).
async fn verify(server: &Server, moto: &Moto, sts: &str) -> Result<Vec<u8>> {
    let before = moto.assume_role_count().await?;
    let resp = once(None, server.addr, "GET", CREDS_PATH, &[], b"")
        .await
        .with_context(|| format!("asking {} for credentials", server.kind.name()))?;
    let doc: serde_json::Value = serde_json::from_slice(&resp.body).unwrap_or_default();
    ensure!(
        resp.status == 200
            && doc["AccessKeyId"]
                .as_str()
                .is_some_and(|k| k.starts_with("ASIA")),
        "{} did not answer credentials ({} {}); its log:\n{}",
        server.kind.name(),
        resp.status,
        resp.text(),
        server.proc.log_tail()
    );
    let after = moto.assume_role_count().await?;
    if server.kind == Kind::Lyft && after == before {
        bail!(
            "Lyft's proxy answered credentials without calling moto's AssumeRole: it is not talking \
             to moto, refusing to benchmark it; its log:\n{}",
            server.proc.log_tail()
        );
    }
    println!(
        "{} answers credentials (AccessKeyId {}…; STS: {sts}; moto AssumeRole calls {before} → {after})",
        server.kind.name(),
        &doc["AccessKeyId"].as_str().unwrap_or_default()[..8]
    );
    Ok(resp.body)
}

/// A run fails when our daemon or the bare server failed requests under load.
fn failures(results: &Results) -> Result<()> {
    for m in &results.measured {
        for kind in [Kind::Ours, Kind::Bare] {
            if let Some(s) = m.of(kind).into_iter().find(|s| s.errors > 0) {
                bail!(
                    "{} failed {} requests in \"{}\": {}",
                    kind.name(),
                    s.errors,
                    m.scenario.title,
                    s.first_error.as_deref().unwrap_or("")
                );
            }
        }
    }
    Ok(())
}

/// Marks the hand-written part of `BENCHMARKS.md` (profiles, findings), carried over by each run.
const NOTES_MARKER: &str =
    "<!-- hand-written below this line: kept when cargo xtask bench rewrites the file -->";

/// The hand-written tail of `BENCHMARKS.md` (from the marker on), or just the marker.
fn kept_notes(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    match text.find(NOTES_MARKER) {
        Some(i) => text[i..].to_owned(),
        None => format!("{NOTES_MARKER}\n"),
    }
}

/// `PATH` for child processes (their environment is otherwise cleared).
fn path_var() -> String {
    std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_the_command_that_regenerates_it() {
        assert_eq!(command_line(false, false, None), "cargo xtask bench");
        assert_eq!(command_line(true, false, None), "cargo xtask bench --quick");
        assert_eq!(command_line(false, true, None), "cargo xtask bench --scale");
        assert_eq!(
            command_line(true, false, Some(Path::new("/work/baseline/mp-old"))),
            "cargo xtask bench --quick --baseline /work/baseline/mp-old"
        );
    }
}
