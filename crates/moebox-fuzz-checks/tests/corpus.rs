//! Every committed fuzz corpus file, through its target's check, on the stable toolchain:
//! the seeds and each minimised find are regression tests. A target without a corpus folder,
//! or with an empty one, fails: a corpus that silently went missing tests nothing.

use std::path::{Path, PathBuf};

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus")
}

#[test]
fn every_target_has_its_corpus_and_passes_it() {
    let root = corpus_root();
    for target in moebox_fuzz_checks::TARGETS {
        let dir = root.join(target.name);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: missing corpus folder: {e}", dir.display()));
        let mut files: Vec<PathBuf> = entries
            .map(|entry| entry.expect("corpus entry").path())
            .filter(|path| path.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: empty corpus", dir.display());
        for file in &files {
            let data = std::fs::read(file).expect("corpus file");
            let outcome = std::panic::catch_unwind(|| (target.check)(&data));
            assert!(
                outcome.is_ok(),
                "{}: {} fails its check",
                target.name,
                file.display()
            );
        }
        eprintln!("{}: {} corpus files pass", target.name, files.len());
    }
}

#[test]
fn every_target_has_a_fuzz_target_file() {
    let fuzz_targets = corpus_root().join("../fuzz_targets");
    for target in moebox_fuzz_checks::TARGETS {
        let file = fuzz_targets.join(format!("{}.rs", target.name));
        let source =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let call = format!("moebox_fuzz_checks::{}::check", target.name);
        assert!(
            source.contains(&call),
            "{} does not call {call}",
            file.display()
        );
    }
}
