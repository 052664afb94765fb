//! Replays every committed fuzz input (`fuzz/corpus/<target>/*`, the minimised corpora, and
//! `fuzz/regressions/<target>/*`, inputs that once failed) through the same entry points the
//! fuzz targets use, so CI checks them on stable without cargo-fuzz.

use std::path::{Path, PathBuf};

use metadataproxy::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files in `dir`, sorted; none when it does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| {
            e.unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path()
        })
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_has_a_fuzz_target_file_and_a_committed_corpus() {
    for (name, _) in TARGETS {
        let target = fuzz_dir().join(format!("fuzz_targets/{name}.rs"));
        let source = std::fs::read_to_string(&target)
            .unwrap_or_else(|e| panic!("{}: {e}", target.display()));
        assert!(
            source.contains(&format!("metadataproxy::fuzzing::{name}(data)")),
            "{} does not call fuzzing::{name}",
            target.display()
        );
        let corpus = fuzz_dir().join("corpus").join(name);
        assert!(
            !inputs(&corpus).is_empty(),
            "no committed corpus in {}",
            corpus.display()
        );
    }
}

#[test]
fn committed_corpora_and_regressions_replay_cleanly() {
    let mut replayed = 0;
    for (name, entry) in TARGETS {
        for kind in ["corpus", "regressions"] {
            for file in inputs(&fuzz_dir().join(kind).join(name)) {
                let data =
                    std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                let outcome = std::panic::catch_unwind(|| entry(&data));
                assert!(
                    outcome.is_ok(),
                    "{name} fails on {} ({:?})",
                    file.display(),
                    String::from_utf8_lossy(&data)
                );
                replayed += 1;
            }
        }
    }
    assert!(replayed > 0, "nothing replayed");
    println!("replayed {replayed} fuzz inputs");
}
