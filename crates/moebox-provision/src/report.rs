//! The report: one row per check (and per GPU for per-GPU checks), its verdict, the evidence it
//! read and what to do about it; rendered as a table for a person and as JSON for the engines,
//! the gateway's status page and support.

use std::{
    fmt::Write as _,
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{gpu::PciGpu, nvml::NvmlState};

/// Schema version of `provision.json`.
pub const REPORT_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Not run: it does not apply, or what it needs failed (named in its summary).
    Skip,
    Pass,
    /// The appliance can serve, but something is off that the admin should fix.
    Warn,
    /// The engines must not start.
    Fail,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Skip => "skip",
            Self::Pass => "pass",
            Self::Warn => "warn",
            Self::Fail => "fail",
        }
    }
}

/// Which GPU a per-GPU check is about: its ordinal in PCI bus order (the order `nvidia-smi` and
/// CUDA with `CUDA_DEVICE_ORDER=PCI_BUS_ID` use) and its PCI address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuRef {
    pub index: u32,
    pub pci: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// Stable name (`pcie_link`), what tests and scripts match on.
    pub id: String,
    pub gpu: Option<GpuRef>,
    pub verdict: Verdict,
    /// One line for a person.
    pub summary: String,
    /// What was read, as `source: value` lines.
    pub evidence: Vec<String>,
    /// What to do, for anything but a pass.
    pub remedy: Option<String>,
}

impl Check {
    pub fn new(
        id: &str,
        gpu: Option<&GpuRef>,
        verdict: Verdict,
        summary: impl Into<String>,
    ) -> Self {
        Self {
            id: id.to_owned(),
            gpu: gpu.cloned(),
            verdict,
            summary: summary.into(),
            evidence: Vec::new(),
            remedy: None,
        }
    }

    pub fn pass(id: &str, gpu: Option<&GpuRef>, summary: impl Into<String>) -> Self {
        Self::new(id, gpu, Verdict::Pass, summary)
    }

    pub fn skip(id: &str, gpu: Option<&GpuRef>, summary: impl Into<String>) -> Self {
        Self::new(id, gpu, Verdict::Skip, summary)
    }

    pub fn warn(
        id: &str,
        gpu: Option<&GpuRef>,
        summary: impl Into<String>,
        remedy: impl Into<String>,
    ) -> Self {
        Self::new(id, gpu, Verdict::Warn, summary).with_remedy(remedy)
    }

    pub fn fail(
        id: &str,
        gpu: Option<&GpuRef>,
        summary: impl Into<String>,
        remedy: impl Into<String>,
    ) -> Self {
        Self::new(id, gpu, Verdict::Fail, summary).with_remedy(remedy)
    }

    pub fn with_remedy(mut self, remedy: impl Into<String>) -> Self {
        self.remedy = Some(remedy.into());
        self
    }

    pub fn with_evidence(mut self, evidence: impl IntoIterator<Item = String>) -> Self {
        self.evidence.extend(evidence);
        self
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub pass: usize,
    pub warn: usize,
    pub fail: usize,
    pub skip: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub version: u32,
    pub moebox_version: String,
    /// Seconds since the Unix epoch when the run started.
    pub started_at: u64,
    /// `/`, or the captured tree that was read.
    pub sysroot: PathBuf,
    /// The worst verdict: `fail` stops the engines.
    pub verdict: Verdict,
    pub counts: Counts,
    /// The NVIDIA GPUs found on the PCI bus.
    pub gpus: Vec<PciGpu>,
    /// What NVML reported, raw (also the input format of the tests' fake NVML).
    pub nvml: NvmlState,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn new(
        sysroot: PathBuf,
        started_at: u64,
        gpus: Vec<PciGpu>,
        nvml: NvmlState,
        checks: Vec<Check>,
    ) -> Self {
        let mut counts = Counts::default();
        for check in &checks {
            match check.verdict {
                Verdict::Pass => counts.pass += 1,
                Verdict::Warn => counts.warn += 1,
                Verdict::Fail => counts.fail += 1,
                Verdict::Skip => counts.skip += 1,
            }
        }
        let verdict = if counts.fail > 0 {
            Verdict::Fail
        } else if counts.warn > 0 {
            Verdict::Warn
        } else {
            Verdict::Pass
        };
        Self {
            version: REPORT_VERSION,
            moebox_version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at,
            sysroot,
            verdict,
            counts,
            gpus,
            nvml,
            checks,
        }
    }

    /// 0: the engines may start (warnings allowed); 1: a failure.
    pub fn exit_code(&self) -> u8 {
        if self.verdict == Verdict::Fail { 1 } else { 0 }
    }

    /// The check `id` (for the GPU with ordinal `gpu`, or the appliance-wide one).
    pub fn find(&self, id: &str, gpu: Option<u32>) -> Option<&Check> {
        self.checks
            .iter()
            .find(|c| c.id == id && c.gpu.as_ref().map(|g| g.index) == gpu)
    }

    /// The one-line summary systemd shows (`STATUS=`).
    pub fn status_line(&self) -> String {
        let Counts {
            pass,
            warn,
            fail,
            skip,
        } = self.counts;
        format!(
            "{}: {pass} pass, {warn} warn, {fail} fail, {skip} skip",
            self.verdict.as_str().to_uppercase()
        )
    }

    /// The table for a person: one row per check; evidence and remedy under every row that is
    /// not a pass.
    pub fn to_table(&self) -> String {
        let id_width = self
            .checks
            .iter()
            .map(|c| c.id.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut out = String::new();
        let _ = writeln!(out, "moebox provision: {}", self.status_line());
        let _ = writeln!(
            out,
            "{:<id_width$}  {:<5}  {:<7}  summary",
            "check", "gpu", "verdict"
        );
        for check in &self.checks {
            let gpu = check
                .gpu
                .as_ref()
                .map_or_else(|| "-".to_owned(), |g| format!("gpu{}", g.index));
            let _ = writeln!(
                out,
                "{:<id_width$}  {gpu:<5}  {:<7}  {}",
                check.id,
                check.verdict.as_str(),
                check.summary
            );
            if matches!(check.verdict, Verdict::Warn | Verdict::Fail) {
                let indent = " ".repeat(id_width + 18);
                for line in &check.evidence {
                    let _ = writeln!(out, "{indent}evidence: {line}");
                }
                if let Some(remedy) = &check.remedy {
                    let _ = writeln!(out, "{indent}remedy: {remedy}");
                }
            }
        }
        out
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self)
            .unwrap_or_else(|e| format!("{{\"error\":\"cannot serialise the report: {e}\"}}"))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write the report {path}: {cause}")]
pub struct WriteError {
    pub path: PathBuf,
    pub cause: std::io::Error,
}

/// Writes `contents` to `path` so that a reader sees the old file or the new one, never half
/// of one: a temporary file in the same folder, synced, then renamed over `path`.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), WriteError> {
    let error = |cause| WriteError {
        path: path.to_owned(),
        cause,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(error)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "provision.json".to_owned());
    let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        // The rename is durable once the folder is synced; on tmpfs this is a no-op.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result.map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(checks: Vec<Check>) -> Report {
        Report::new(
            PathBuf::from("/"),
            0,
            Vec::new(),
            NvmlState::default(),
            checks,
        )
    }

    #[test]
    fn worst_verdict_wins_and_skips_do_not_count() {
        let gpu = GpuRef {
            index: 0,
            pci: "0000:07:00.0".into(),
        };
        let r = report(vec![
            Check::pass("a", None, "ok"),
            Check::skip("b", Some(&gpu), "n/a"),
        ]);
        assert_eq!((r.verdict, r.exit_code()), (Verdict::Pass, 0));
        let r = report(vec![
            Check::pass("a", None, "ok"),
            Check::warn("b", Some(&gpu), "hot", "cool it"),
        ]);
        assert_eq!((r.verdict, r.exit_code()), (Verdict::Warn, 0));
        let r = report(vec![
            Check::fail("a", None, "gone", "reseat"),
            Check::warn("b", Some(&gpu), "hot", "cool it"),
        ]);
        assert_eq!((r.verdict, r.exit_code()), (Verdict::Fail, 1));
        assert_eq!(r.status_line(), "FAIL: 0 pass, 1 warn, 1 fail, 0 skip");
        assert_eq!(r.find("b", Some(0)).map(|c| c.verdict), Some(Verdict::Warn));
        assert!(r.find("b", None).is_none());
    }

    #[test]
    fn table_shows_remedies_for_failures_only() {
        let r = report(vec![
            Check::pass("artefacts", None, "3 files match").with_remedy("unused"),
            Check::fail("gpus_present", None, "no NVIDIA GPU found", "seat the GPUs")
                .with_evidence(["/sys/bus/pci/devices: 3 devices".to_owned()]),
        ]);
        let table = r.to_table();
        assert!(table.contains("remedy: seat the GPUs"), "{table}");
        assert!(!table.contains("unused"), "{table}");
        assert!(
            table.contains("evidence: /sys/bus/pci/devices: 3 devices"),
            "{table}"
        );
    }

    #[test]
    fn json_round_trips() {
        let r = report(vec![Check::fail("x", None, "s", "r")]);
        let back: Report = serde_json::from_str(&r.to_json()).expect("parses");
        assert_eq!(back, r);
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run/moebox/provision.json");
        write_atomically(&path, b"one").expect("first write");
        write_atomically(&path, b"two").expect("second write");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let names = crate::sysroot::list_path(path.parent().expect("parent")).expect("list");
        assert_eq!(names, vec!["provision.json".to_owned()]);
    }

    #[test]
    fn atomic_write_names_the_path_on_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("file"), "x").expect("write");
        let err = write_atomically(&dir.path().join("file/provision.json"), b"x")
            .expect_err("a file is not a folder");
        assert!(err.to_string().contains("file/provision.json"), "{err}");
    }
}
