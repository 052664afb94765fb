//! `cargo xtask`: the developer commands (setup, test, demo, build-ebpf, bench, fuzz, mutants, modules).
#![expect(
    clippy::print_stdout,
    reason = "xtask is a command-line tool; stdout is its interface"
)]

mod bench;
mod demo;
mod ebpf;
mod fuzz;
mod modules;
mod mutants;
mod privileged;
mod process;
mod repo;
mod setup;
mod soak;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Developer commands for metadataproxy.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install the missing Debian packages the tests and the demo use (as root; each is named with
    /// what needs it), then create `.venv` with moto, boto3, botocore and awscli.
    Setup,
    /// The whole suite: `cargo test --workspace` against real peers, then (as root) the privileged
    /// eBPF tests.
    Test {
        /// Skip the privileged eBPF tests (they need root, BTF, cgroup v2 and bpffs).
        #[arg(long)]
        unprivileged: bool,
        /// Extra arguments passed through to `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// End to end on this machine (as root): containers calling 169.254.169.254 get their own roles.
    Demo {
        /// Run the mapping-file fallback (no containers, no eBPF) even where the real demo can run.
        #[arg(long)]
        fallback: bool,
    },
    /// Build the eBPF programs with nightly and bpf-linker (installing what is missing).
    BuildEbpf,
    /// As root: build the eBPF object and the daemon, run `tests/privileged` with one thread.
    TestPrivileged {
        /// Extra arguments passed through to the test binary (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// As root: per-connection cost of the eBPF redirect + identification vs a direct connection.
    BenchRedirect,
    /// Benchmark against Lyft's metadataproxy 2.2.0 and a bare hyper server; writes BENCHMARKS.md.
    Bench {
        /// A short smoke run (about a minute): checks everything runs, numbers are not meaningful.
        #[arg(long)]
        quick: bool,
        /// An earlier build of the daemon (e.g. a release build of an older commit) measured side
        /// by side with ours in the same run, through the redirect too.
        #[arg(long, value_name = "PATH")]
        baseline: Option<std::path::PathBuf>,
        /// Only the scale scenarios (issue 15: real containers in a burst, 10,000 synthetic ones);
        /// writes target/bench/BENCHMARKS-scale.md (with --quick: their small version).
        #[arg(long)]
        scale: bool,
    },
    /// Soak: mixed load for N minutes with credentials rotating every 5-40 s; fails unless there
    /// were no errors, memory stayed flat and STS was called only at refresh points. Not for CI.
    Soak {
        /// How long to run.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
    },
    /// Run every cargo-fuzz target (or those named) for a bounded time; prints executions per target.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Minimise each corpus (`cargo fuzz cmin`) after its run.
        #[arg(long)]
        cmin: bool,
        /// Targets to run (default: all in `fuzz/fuzz_targets`).
        targets: Vec<String>,
    },
    /// The daemon's module graph (from its `crate::` paths, tests left out) and its cycles, for
    /// the crate and every folder; `--check` fails when there is a cycle.
    Modules {
        /// Exit non-zero when a module cycle exists.
        #[arg(long)]
        check: bool,
    },
    /// Mutation testing (cargo-mutants) of the security-critical files, or of the files named,
    /// with the daemon's unit tests; prints caught and missed mutants per file. Not for CI.
    Mutants {
        /// Files or globs to mutate, relative to the repository (default: identity, the kernel
        /// record table, the exemption policy, the router, the token store, caller limits).
        files: Vec<String>,
        /// Arguments for `cargo test` instead of `--lib` (e.g. `--lib --test NAME`).
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// The bench's bare hyper server (internal: `cargo xtask bench` starts it).
    #[command(hide = true)]
    BenchBareServer {
        /// Listen address.
        addr: std::net::SocketAddr,
        /// File whose bytes every response carries.
        body: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run().map(|_| ()),
        Command::Test { unprivileged, args } => test::run(&args).and_then(|()| {
            if unprivileged {
                println!("xtask: --unprivileged: the privileged eBPF tests were not run");
                Ok(())
            } else {
                privileged::run(&[], false)
            }
        }),
        Command::Demo { fallback } => demo::run(fallback),
        Command::BuildEbpf => ebpf::run(),
        Command::TestPrivileged { args } => privileged::run(&args, false),
        Command::BenchRedirect => privileged::run(&[], true),
        Command::Bench {
            quick,
            baseline,
            scale,
        } => bench::run(quick, scale, baseline.as_deref()),
        Command::Soak { minutes } => soak::run(minutes),
        Command::Fuzz {
            seconds,
            cmin,
            targets,
        } => fuzz::run(seconds, cmin, &targets),
        Command::Modules { check } => modules::run(check),
        Command::Mutants { files, test_args } => mutants::run(&files, &test_args),
        Command::BenchBareServer { addr, body } => bench::bare::serve(addr, &body),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a step header so long commands say where they are.
fn step(title: &str) {
    println!("\n==> {title}");
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use clap::Parser;
    use clap::error::ErrorKind;

    use super::{Cli, Command};

    /// `cargo xtask ARGS…` parsed, or clap's error.
    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("cargo xtask").chain(args.iter().copied()))
            .map(|cli| cli.command)
    }

    fn bench(args: &[&str]) -> (bool, Option<PathBuf>) {
        match parse(args) {
            Ok(Command::Bench {
                quick, baseline, ..
            }) => (quick, baseline),
            other => panic!("{args:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn bench_without_baseline_is_todays_bench() {
        assert_eq!(bench(&["bench"]), (false, None));
        assert_eq!(bench(&["bench", "--quick"]), (true, None));
    }

    #[test]
    fn bench_scale_runs_the_scale_scenarios_alone() {
        assert!(matches!(
            parse(&["bench", "--scale", "--quick"]),
            Ok(Command::Bench {
                quick: true,
                scale: true,
                baseline: None
            })
        ));
        assert!(matches!(
            parse(&["bench"]),
            Ok(Command::Bench { scale: false, .. })
        ));
    }

    #[test]
    fn bench_baseline_takes_a_path() {
        let old = Some(PathBuf::from("/work/baseline/metadataproxy-old"));
        assert_eq!(
            bench(&["bench", "--baseline", "/work/baseline/metadataproxy-old"]),
            (false, old.clone())
        );
        assert_eq!(
            bench(&["bench", "--baseline=/work/baseline/metadataproxy-old"]),
            (false, old.clone())
        );
        assert_eq!(
            bench(&["bench", "--baseline", "old/metadataproxy"]),
            (false, Some(PathBuf::from("old/metadataproxy")))
        );
    }

    #[test]
    fn bench_baseline_combines_with_quick_in_either_order() {
        let old = Some(PathBuf::from("/tmp/mp-old"));
        assert_eq!(
            bench(&["bench", "--quick", "--baseline", "/tmp/mp-old"]),
            (true, old.clone())
        );
        assert_eq!(
            bench(&["bench", "--baseline", "/tmp/mp-old", "--quick"]),
            (true, old)
        );
    }

    #[test]
    fn bench_baseline_without_a_value_is_refused() {
        for args in [
            &["bench", "--baseline"][..],
            &["bench", "--quick", "--baseline"][..],
        ] {
            let err = parse(args).expect_err("a value is required");
            assert_eq!(err.kind(), ErrorKind::InvalidValue, "{args:?}: {err}");
            assert!(err.to_string().contains("--baseline <PATH>"), "{err}");
        }
        // `--quick` is a flag, never taken as the baseline's path.
        let err = parse(&["bench", "--baseline", "--quick"]).expect_err("--quick is no path");
        assert_eq!(err.kind(), ErrorKind::InvalidValue, "{err}");
    }

    #[test]
    fn bench_baseline_given_twice_is_refused() {
        let err = parse(&["bench", "--baseline", "/a", "--baseline", "/b"]).expect_err("twice");
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict, "{err}");
    }
}
