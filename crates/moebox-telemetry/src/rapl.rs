//! CPU package energy from RAPL through the kernel's powercap interface.
//!
//! Each package domain is a zone `intel-rapl:N` (name `package-N`; AMD's are there too, under
//! the same name) with an `energy_uj` counter that wraps after `max_energy_range_uj`. Subzones
//! (`intel-rapl:N:M`: core, uncore, dram) are parts of a package and would count twice; `psys`
//! (the whole platform, on client parts) and the `intel-rapl-mmio` copies of the packages are
//! left out for the same reason. The directory is an argument, so tests read a fake tree.

use std::{
    io,
    path::{Path, PathBuf},
};

use moebox_protocol::telemetry::{PackageSample, Reading, SourceKind, UnavailableKind};

use crate::Source;

/// Where the kernel publishes powercap zones.
pub const POWERCAP_DIR: &str = "/sys/class/powercap";
/// The zone prefix of RAPL's package domains.
const ZONE_PREFIX: &str = "intel-rapl:";

/// RAPL package energy from a powercap directory.
#[derive(Debug, Clone)]
pub struct RaplSource {
    powercap: PathBuf,
}

impl RaplSource {
    /// Reads `powercap` (the real one is [`POWERCAP_DIR`]).
    pub fn new(powercap: impl Into<PathBuf>) -> Self {
        Self {
            powercap: powercap.into(),
        }
    }
}

impl Source for RaplSource {
    fn read(&mut self) -> Reading {
        match read_packages(&self.powercap) {
            Ok(packages) => Reading::Rapl { packages },
            Err((kind, reason)) => Reading::Unavailable {
                tried: SourceKind::Rapl,
                kind,
                reason,
            },
        }
    }
}

type Unavailable = (UnavailableKind, String);

fn read_packages(powercap: &Path) -> Result<Vec<PackageSample>, Unavailable> {
    let entries = std::fs::read_dir(powercap).map_err(|err| match err.kind() {
        io::ErrorKind::NotFound => (
            UnavailableKind::NotSupported,
            format!(
                "{}: no such directory: the kernel exposes no powercap zones (no RAPL driver \
                 such as intel_rapl_msr, or a virtual machine without RAPL)",
                powercap.display()
            ),
        ),
        _ => read_failure(powercap, &err),
    })?;
    let mut zones: Vec<(u32, String)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let zone = entry.file_name().to_str()?.to_owned();
            let index = zone.strip_prefix(ZONE_PREFIX)?.parse::<u32>().ok()?;
            Some((index, zone))
        })
        .collect();
    zones.sort();
    let mut packages = Vec::new();
    for (_, zone) in zones {
        let dir = powercap.join(&zone);
        let name = read_text(&dir.join("name"))?;
        if !name.starts_with("package") {
            continue;
        }
        let energy_counter_uj = read_number(&dir.join("energy_uj"))?;
        let max_energy_range_uj = read_number(&dir.join("max_energy_range_uj"))?;
        packages.push(PackageSample {
            zone,
            name,
            energy_counter_uj,
            max_energy_range_uj,
            energy: None,
        });
    }
    if packages.is_empty() {
        return Err((
            UnavailableKind::NoDevice,
            format!(
                "{}: no RAPL package domain (no {ZONE_PREFIX}N zone named package-N)",
                powercap.display()
            ),
        ));
    }
    Ok(packages)
}

fn read_text(path: &Path) -> Result<String, Unavailable> {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_owned())
        .map_err(|err| read_failure(path, &err))
}

fn read_number(path: &Path) -> Result<u64, Unavailable> {
    let text = read_text(path)?;
    text.parse().map_err(|_| {
        (
            UnavailableKind::Failed,
            format!("{}: not a counter value: {text:?}", path.display()),
        )
    })
}

/// A read error as a reason a person can act on.
pub(crate) fn read_failure(path: &Path, err: &io::Error) -> Unavailable {
    if err.kind() == io::ErrorKind::PermissionDenied {
        return (
            UnavailableKind::NoPermission,
            format!(
                "{}: permission denied: RAPL energy counters are readable by root only since \
                 Linux 5.10 (CVE-2020-8694); give the engine's user read access (a udev rule or \
                 a tmpfiles.d `z` line for a group it is in) to measure CPU energy",
                path.display()
            ),
        );
    }
    (
        UnavailableKind::Failed,
        format!("{}: {err}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    /// A powercap tree as a two-socket Intel server shows it, with the zones that must not be
    /// counted.
    fn fake_tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let zone = |name: &str, domain: &str, energy: u64| {
            let path = dir.path().join(name);
            fs::create_dir_all(&path).expect("mkdir");
            fs::write(path.join("name"), format!("{domain}\n")).expect("write");
            fs::write(path.join("energy_uj"), format!("{energy}\n")).expect("write");
            fs::write(path.join("max_energy_range_uj"), "262143328850\n").expect("write");
            fs::write(path.join("enabled"), "1\n").expect("write");
        };
        // The control type directory has no counters.
        fs::create_dir_all(dir.path().join("intel-rapl")).expect("mkdir");
        zone("intel-rapl:0", "package-0", 1_000_000);
        zone("intel-rapl:0:0", "core", 500_000);
        zone("intel-rapl:0:1", "dram", 200_000);
        zone("intel-rapl:1", "package-1", 3_000_000);
        zone("intel-rapl:2", "psys", 9_000_000);
        zone("intel-rapl-mmio:0", "package-0", 1_000_500);
        dir
    }

    #[test]
    fn package_domains_are_read_and_parts_of_them_left_out() {
        let tree = fake_tree();
        let reading = RaplSource::new(tree.path()).read();
        let Reading::Rapl { packages } = reading else {
            panic!("{reading:?}");
        };
        let seen: Vec<_> = packages
            .iter()
            .map(|p| (p.zone.as_str(), p.name.as_str(), p.energy_counter_uj))
            .collect();
        assert_eq!(
            seen,
            [
                ("intel-rapl:0", "package-0", 1_000_000),
                ("intel-rapl:1", "package-1", 3_000_000)
            ]
        );
        assert_eq!(packages[0].max_energy_range_uj, 262_143_328_850);
        assert_eq!(
            packages[0].energy, None,
            "the sampler integrates, not the source"
        );
    }

    #[test]
    fn zones_sort_by_number_not_by_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        for n in [10, 2] {
            let path = dir.path().join(format!("intel-rapl:{n}"));
            fs::create_dir_all(&path).expect("mkdir");
            fs::write(path.join("name"), format!("package-{n}")).expect("write");
            fs::write(path.join("energy_uj"), "1").expect("write");
            fs::write(path.join("max_energy_range_uj"), "2").expect("write");
        }
        let Reading::Rapl { packages } = RaplSource::new(dir.path()).read() else {
            panic!("packages expected");
        };
        assert_eq!(packages[0].zone, "intel-rapl:2");
        assert_eq!(packages[1].zone, "intel-rapl:10");
    }

    #[test]
    fn no_powercap_directory_is_not_supported_and_says_where_it_looked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("powercap");
        let reading = RaplSource::new(&missing).read();
        let Reading::Unavailable {
            tried,
            kind,
            reason,
        } = reading
        else {
            panic!("{reading:?}");
        };
        assert_eq!(
            (tried, kind),
            (SourceKind::Rapl, UnavailableKind::NotSupported)
        );
        assert!(reason.contains(&missing.display().to_string()), "{reason}");
        assert!(reason.contains("no powercap zones"), "{reason}");
    }

    #[test]
    fn a_tree_without_packages_has_no_device() {
        let tree = fake_tree();
        for zone in ["intel-rapl:0", "intel-rapl:1"] {
            fs::remove_dir_all(tree.path().join(zone)).expect("rm");
        }
        let reading = RaplSource::new(tree.path()).read();
        assert!(
            matches!(
                &reading,
                Reading::Unavailable { kind: UnavailableKind::NoDevice, reason, .. }
                    if reason.contains("no RAPL package domain")
            ),
            "{reading:?}"
        );
    }

    #[test]
    fn a_counter_that_is_not_a_number_is_named() {
        let tree = fake_tree();
        let path = tree.path().join("intel-rapl:1/energy_uj");
        fs::write(&path, "lots\n").expect("write");
        let reading = RaplSource::new(tree.path()).read();
        let Reading::Unavailable { kind, reason, .. } = reading else {
            panic!("{reading:?}");
        };
        assert_eq!(kind, UnavailableKind::Failed);
        assert!(reason.contains(&path.display().to_string()), "{reason}");
        assert!(reason.contains("\"lots\""), "{reason}");
    }

    #[test]
    fn an_unreadable_counter_is_reported_with_the_path() {
        let tree = fake_tree();
        // A directory where the file should be: a read error that root gets too.
        let path = tree.path().join("intel-rapl:0/energy_uj");
        fs::remove_file(&path).expect("rm");
        fs::create_dir(&path).expect("mkdir");
        let Reading::Unavailable { kind, reason, .. } = RaplSource::new(tree.path()).read() else {
            panic!("unavailable expected");
        };
        assert_eq!(kind, UnavailableKind::Failed);
        assert!(reason.starts_with(&path.display().to_string()), "{reason}");
    }

    #[test]
    fn permission_denied_explains_the_root_only_counter() {
        // Tests run as root here, which no file mode stops: the classification is checked on
        // the error itself.
        let path = Path::new("/sys/class/powercap/intel-rapl:0/energy_uj");
        let (kind, reason) = read_failure(path, &io::Error::from(io::ErrorKind::PermissionDenied));
        assert_eq!(kind, UnavailableKind::NoPermission);
        assert!(reason.starts_with(&path.display().to_string()), "{reason}");
        assert!(reason.contains("permission denied"), "{reason}");
        assert!(reason.contains("root only since Linux 5.10"), "{reason}");
    }
}
