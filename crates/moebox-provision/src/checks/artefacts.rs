//! Every installed artefact (ONNX Runtime, CUDA libraries, the model folder) matches the sha256
//! the image build recorded.

use std::path::Path;

use super::{ARTEFACTS, Finding, conclude, plural};
use crate::{
    artefacts::{self, Outcome, SumsError},
    report::Check,
};

/// Failing files named in the summary; the rest are counted.
pub const MAX_NAMED_FILES: usize = 3;

const REFLASH: &str = "An installed file is missing or changed (disk corruption or tampering): reflash the image, or reinstall the file from the pinned manifest (provisioning/assemble.py).";

pub fn artefacts(list: &Path) -> Check {
    let entries = match artefacts::load(list) {
        Ok(entries) => entries,
        Err(SumsError::Read(err)) if err.is_not_found() => {
            return Check::fail(
                ARTEFACTS,
                None,
                format!("artefact list {} not found", list.display()),
                "The image is incomplete (provisioning/assemble.py writes this list): rebuild it, or point provision.artefacts at the list.",
            );
        }
        Err(err) => {
            return Check::fail(ARTEFACTS, None, err.to_string(), REFLASH);
        }
    };
    let outcomes = artefacts::verify(&entries);
    let mut bad = Vec::new();
    let mut evidence = vec![format!(
        "{}: {}",
        list.display(),
        plural(entries.len(), "file", "files")
    )];
    let mut bytes = 0u64;
    for (entry, outcome) in entries.iter().zip(&outcomes) {
        match outcome {
            Outcome::Match { bytes: size } => bytes += size,
            Outcome::Mismatch { found } => {
                evidence.push(format!(
                    "{}: sha256 {found}, expected {}",
                    entry.path.display(),
                    entry.sha256
                ));
                bad.push(entry.path.display().to_string());
            }
            Outcome::Unreadable { message } => {
                evidence.push(format!("{}: {message}", entry.path.display()));
                bad.push(entry.path.display().to_string());
            }
        }
    }
    let findings = if bad.is_empty() {
        Vec::new()
    } else {
        let mut named = bad
            .iter()
            .take(MAX_NAMED_FILES)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if bad.len() > MAX_NAMED_FILES {
            named.push_str(&format!(" and {} more", bad.len() - MAX_NAMED_FILES));
        }
        vec![Finding::fail(
            format!(
                "{} of {} do not match: {named}",
                bad.len(),
                plural(entries.len(), "artefact", "artefacts")
            ),
            REFLASH,
        )]
    };
    conclude(
        ARTEFACTS,
        None,
        format!(
            "{} ({:.1} MB) match their sha256",
            plural(entries.len(), "file", "files"),
            bytes as f64 / 1e6
        ),
        findings,
        evidence,
    )
}
