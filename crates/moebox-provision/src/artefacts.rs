//! The installed artefacts (ONNX Runtime, CUDA libraries, the model folder) against the
//! `sha256sum`-format list the image build writes (`provisioning/assemble.py`), so an admin can
//! also run `sha256sum -c` on it. Relative paths are relative to the list's folder.

use std::{
    io::Read,
    path::{Path, PathBuf},
    thread,
};

use sha2::{Digest, Sha256};

use crate::sysroot::{ReadError, read_path};

/// Files hashed at once: the model's weights are a few large files, and a boot-time gate
/// should not take every core from the rest of the boot.
pub const MAX_HASH_THREADS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub sha256: String,
    pub path: PathBuf,
    /// 1-based line in the list, for messages.
    pub line: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SumsError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("{path}:{line}: expected `<64 hex digits>  <path>`, got `{text}`")]
    Syntax {
        path: PathBuf,
        line: usize,
        text: String,
    },
    #[error("{path} lists no files")]
    Empty { path: PathBuf },
}

pub fn parse(list: &Path, text: &str) -> Result<Vec<Entry>, SumsError> {
    let base = list.parent().unwrap_or(Path::new("/"));
    let mut entries = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let syntax = || SumsError::Syntax {
            path: list.to_owned(),
            line: i + 1,
            text: line.to_owned(),
        };
        let (sha256, name) = line.split_once(' ').ok_or_else(syntax)?;
        // `sha256sum` writes two spaces (text mode) or ` *` (binary mode).
        let name = name
            .strip_prefix(' ')
            .or_else(|| name.strip_prefix('*'))
            .ok_or_else(syntax)?;
        if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) || name.is_empty() {
            return Err(syntax());
        }
        entries.push(Entry {
            sha256: sha256.to_ascii_lowercase(),
            path: base.join(name),
            line: i + 1,
        });
    }
    if entries.is_empty() {
        return Err(SumsError::Empty {
            path: list.to_owned(),
        });
    }
    Ok(entries)
}

pub fn load(list: &Path) -> Result<Vec<Entry>, SumsError> {
    parse(list, &read_path(list)?)
}

/// What verifying one entry found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Match { bytes: u64 },
    Mismatch { found: String },
    Unreadable { message: String },
}

pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        bytes += n as u64;
    }
    let digest = hasher.finalize();
    let hex = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok((hex, bytes))
}

/// Hashes every entry, several files at a time; outcomes in the list's order.
pub fn verify(entries: &[Entry]) -> Vec<Outcome> {
    let threads = thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, MAX_HASH_THREADS);
    let chunk = entries.len().div_ceil(threads).max(1);
    thread::scope(|scope| {
        let handles: Vec<_> = entries
            .chunks(chunk)
            .map(|chunk| scope.spawn(move || chunk.iter().map(verify_one).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| {
                handle.join().unwrap_or_else(|_| {
                    vec![Outcome::Unreadable {
                        message: "the hashing thread panicked".to_owned(),
                    }]
                })
            })
            .collect()
    })
}

fn verify_one(entry: &Entry) -> Outcome {
    match sha256_file(&entry.path) {
        Ok((found, bytes)) if found == entry.sha256 => Outcome::Match { bytes },
        Ok((found, _)) => Outcome::Mismatch { found },
        Err(err) => Outcome::Unreadable {
            message: err.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn sha256sum_lines_parse_in_both_modes() {
        let text = format!(
            "# made by assemble.py\n{EMPTY_SHA256}  lib/a.so\n{EMPTY_SHA256} */usr/share/m/model.onnx\n\n"
        );
        let entries = parse(Path::new("/usr/lib/moebox/SHA256SUMS"), &text).expect("parses");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].path, Path::new("/usr/lib/moebox/lib/a.so"));
        assert_eq!(entries[0].line, 2);
        assert_eq!(entries[1].path, Path::new("/usr/share/m/model.onnx"));
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let err = parse(Path::new("/x/SHA256SUMS"), "abc  file\n").expect_err("short hash");
        assert!(err.to_string().starts_with("/x/SHA256SUMS:1:"), "{err}");
        let err = parse(Path::new("/x/SHA256SUMS"), "# nothing\n").expect_err("empty");
        assert!(matches!(err, SumsError::Empty { .. }), "{err}");
    }

    #[test]
    fn verification_reports_each_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("empty"), "").expect("write");
        std::fs::write(dir.path().join("changed"), "x").expect("write");
        let list = dir.path().join("SHA256SUMS");
        let text =
            format!("{EMPTY_SHA256}  empty\n{EMPTY_SHA256}  changed\n{EMPTY_SHA256}  gone\n");
        let entries = parse(&list, &text).expect("parses");
        let outcomes = verify(&entries);
        assert_eq!(outcomes[0], Outcome::Match { bytes: 0 });
        assert!(
            matches!(&outcomes[1], Outcome::Mismatch { found } if found.starts_with("2d711642"))
        );
        assert!(matches!(&outcomes[2], Outcome::Unreadable { .. }));
    }
}
