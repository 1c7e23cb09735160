//! The systemd units, sysusers.d and tmpfiles.d entries in `systemd/`, checked with systemd's own
//! tools as the image installs them:
//!
//! - `systemd-analyze verify` accepts every unit without a single line of output (it exits 0 on
//!   warnings, so any output fails the test);
//! - `systemd-analyze security --offline=yes` scores each service at or below its threshold,
//!   and `docs/security.md` lists the score it measures;
//! - every `ExecStart=` command line is one the real binary's command line parser accepts;
//! - `systemd-sysusers` and `systemd-tmpfiles` make the users and folders with the owners and
//!   modes the units rely on;
//! - the image's configuration templates pass `moebox config check`.
//!
//! Needs systemd-analyze 254 or later (`image/host-deps.sh units` installs it on Debian 12, as
//! `.ci/run` does) and root for the tmpfiles ownerships.

use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// The oldest systemd whose `security --offline=yes --root=` scores units from files alone.
const MIN_SYSTEMD: u32 = 254;

/// Exposure thresholds (`systemd-analyze security`, 0 = locked down, 10 = fully exposed).
/// The gateway parses untrusted HTTP; the engine runs CUDA with no network; provisioning and
/// first boot run as root because loading modules, creating device nodes and writing /etc
/// need it.
const THRESHOLDS: [(&str, f64); 4] = [
    ("moebox-gateway.service", 2.0),
    ("moebox-engine@0.service", 2.5),
    ("moebox-provision.service", 2.0),
    ("moebox-first-boot.service", 2.5),
];

/// Every unit the image installs, as systemd loads them (the engine as instance 0).
const UNITS: [&str; 6] = [
    "moebox.target",
    "moebox-gateway.socket",
    "moebox-gateway.service",
    "moebox-engine@0.service",
    "moebox-provision.service",
    "moebox-first-boot.service",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn systemd_dir() -> PathBuf {
    repo().join("systemd")
}

fn run(command: &mut Command) -> Output {
    let shown = format!("{command:?}");
    command
        .output()
        .unwrap_or_else(|err| panic!("cannot run {shown}: {err}"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Fails with the remedy when systemd-analyze is missing or older than [`MIN_SYSTEMD`].
fn require_systemd() {
    let output = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .unwrap_or_else(|err| {
            panic!(
                "systemd-analyze is needed to check the units ({err}): run image/host-deps.sh units"
            )
        });
    let version = String::from_utf8_lossy(&output.stdout);
    let major = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("cannot read systemd-analyze --version: {version}"));
    assert!(
        major >= MIN_SYSTEMD,
        "systemd-analyze {major} is older than {MIN_SYSTEMD}, which `security --offline=yes \
         --root=` needs: run image/host-deps.sh units (systemd from bookworm-backports)"
    );
}

/// A root tree as the image has it: the host's own units (targets the ours refer to), ours,
/// and executables at the paths the units start. The executables are stand-ins: what
/// `verify` checks is that they exist and are executable; the real binary's command line is
/// checked by `exec_start_lines_parse_with_the_real_cli`.
fn unit_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("tempdir");
    let units = root.path().join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).expect("mkdir");
    let copy = Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system/."])
        .arg(&units)
        .status()
        .expect("cp");
    assert!(copy.success(), "cannot copy the host's units");
    for entry in std::fs::read_dir(systemd_dir()).expect("systemd/") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            std::fs::copy(&path, units.join(path.file_name().expect("name"))).expect("copy unit");
        }
    }
    for program in exec_programs() {
        let stand_in = root.path().join(program.trim_start_matches('/'));
        std::fs::create_dir_all(stand_in.parent().expect("parent")).expect("mkdir");
        std::fs::write(&stand_in, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    root
}

/// `ExecStart=` lines of every service in `systemd/`, by unit file name.
fn exec_starts() -> BTreeMap<String, Vec<String>> {
    let mut lines = BTreeMap::new();
    for entry in std::fs::read_dir(systemd_dir()).expect("systemd/") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("service") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read unit");
        let starts: Vec<String> = text
            .lines()
            .filter_map(|line| line.strip_prefix("ExecStart="))
            .map(str::to_owned)
            .collect();
        assert!(!starts.is_empty(), "{}: no ExecStart=", path.display());
        lines.insert(
            path.file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned(),
            starts,
        );
    }
    lines
}

fn exec_programs() -> Vec<String> {
    let mut programs: Vec<String> = exec_starts()
        .values()
        .flatten()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect();
    programs.sort();
    programs.dedup();
    programs
}

#[test]
fn every_unit_passes_systemd_analyze_verify_without_output() {
    require_systemd();
    let root = unit_root();
    let output = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.path().display()))
        .args(UNITS));
    let said = text(&output);
    assert!(
        output.status.success() && said.trim().is_empty(),
        "systemd-analyze verify ({}):\n{said}",
        output.status
    );
}

/// The overall exposure `systemd-analyze security` prints for `unit`, after checking that it is
/// at most `threshold` (`--threshold` makes the command fail above it).
fn exposure(root: &Path, unit: &str, threshold: f64) -> f64 {
    let output = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        // systemd-analyze takes the threshold in tenths (20 is an exposure of 2.0).
        .arg(format!("--threshold={}", (threshold * 10.0).round() as u32))
        .arg(format!("--root={}", root.display()))
        .arg(unit));
    let said = text(&output);
    let marker = format!("Overall exposure level for {unit}: ");
    let score = said
        .lines()
        .find_map(|line| line.split_once(&marker).map(|(_, rest)| rest.to_owned()))
        .and_then(|rest| rest.split_whitespace().next().map(str::to_owned))
        .and_then(|score| score.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no exposure level for {unit} in:\n{said}"));
    assert!(
        output.status.success() && score <= threshold,
        "{unit}: exposure {score} is above its threshold {threshold} ({}):\n{said}",
        output.status
    );
    score
}

#[test]
fn every_service_is_at_or_below_its_exposure_threshold_and_docs_say_so() {
    require_systemd();
    let root = unit_root();
    let docs = std::fs::read_to_string(repo().join("docs/security.md")).expect("docs/security.md");
    for (unit, threshold) in THRESHOLDS {
        let score = exposure(root.path(), unit, threshold);
        // The table row in docs/security.md: | `unit` | score | threshold | ...
        let row = docs
            .lines()
            .find(|line| line.starts_with(&format!("| `{unit}` |")))
            .unwrap_or_else(|| panic!("docs/security.md has no table row for `{unit}`"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(
            (cells.get(2).copied(), cells.get(3).copied()),
            (
                Some(format!("{score:.1}").as_str()),
                Some(format!("{threshold:.1}").as_str())
            ),
            "docs/security.md lists `{unit}` as {row:?}; systemd-analyze measures {score:.1} \
             against the threshold {threshold:.1}"
        );
    }
}

#[test]
fn exec_start_lines_parse_with_the_real_cli() {
    let moebox = env!("CARGO_BIN_EXE_moebox");
    let missing = tempfile::tempdir().expect("tempdir");
    let config = missing.path().join("absent.toml");
    for (unit, lines) in exec_starts() {
        for line in lines {
            let mut words = line.split_whitespace();
            let program = words.next().expect("program");
            if program != "/usr/bin/moebox" {
                continue;
            }
            // The instance (%i) is a GPU index; the config is one that does not exist, so a
            // command that parses stops at loading it, naming the file.
            let args: Vec<String> = words
                .map(|word| match word {
                    "%i" => "0".to_owned(),
                    "/etc/moebox/moebox.toml" => config.display().to_string(),
                    other => other.to_owned(),
                })
                .collect();
            let output = run(Command::new(moebox).args(&args));
            let said = text(&output);
            assert!(
                !output.status.success()
                    && said.contains("absent.toml")
                    && !said.contains("Usage:"),
                "{unit}: `moebox {}` should parse and then fail on the missing config, got \
                 ({}):\n{said}",
                args.join(" "),
                output.status
            );
        }
    }
}

#[test]
fn image_config_templates_pass_config_check() {
    let moebox = env!("CARGO_BIN_EXE_moebox");
    let profiles = repo().join("image/mkosi.profiles");
    let mut checked = 0;
    for entry in std::fs::read_dir(&profiles).expect("image/mkosi.profiles") {
        let template = entry
            .expect("entry")
            .path()
            .join("mkosi.extra/usr/share/moebox/moebox.toml.template");
        if !template.exists() {
            continue;
        }
        let output = run(Command::new(moebox)
            .args(["config", "check", "--config"])
            .arg(&template));
        assert!(
            output.status.success(),
            "{}: {}",
            template.display(),
            text(&output)
        );
        checked += 1;
    }
    assert!(
        checked >= 1,
        "no configuration template under {}",
        profiles.display()
    );
}

/// Numeric owner, group and mode of `path`, from `stat`.
fn stat(path: &Path) -> (u32, u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    (meta.uid(), meta.gid(), meta.mode() & 0o7777)
}

/// `name`'s id in the root's `/etc/passwd` or `/etc/group`.
fn id_of(root: &Path, file: &str, name: &str) -> u32 {
    let text = std::fs::read_to_string(root.join("etc").join(file)).expect("passwd/group");
    text.lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&name)).then(|| fields[2].parse().expect("id"))
        })
        .unwrap_or_else(|| panic!("{name} is not in /etc/{file}:\n{text}"))
}

#[test]
fn sysusers_and_tmpfiles_make_the_users_and_folders_the_units_use() {
    require_systemd();
    let uid = run(Command::new("id").arg("-u"));
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "systemd-tmpfiles sets owners, which needs root (CI runs as root)"
    );
    let root = tempfile::tempdir().expect("tempdir");
    for (kind, file) in [("sysusers.d", "moebox.conf"), ("tmpfiles.d", "moebox.conf")] {
        let dest = root.path().join("usr/lib").join(kind);
        std::fs::create_dir_all(&dest).expect("mkdir");
        std::fs::copy(systemd_dir().join(kind).join(file), dest.join(file)).expect("copy");
    }
    std::fs::create_dir_all(root.path().join("etc")).expect("mkdir");
    let root_arg = format!("--root={}", root.path().display());
    let sysusers = run(Command::new("systemd-sysusers")
        .arg(&root_arg)
        .arg("moebox.conf"));
    assert!(
        sysusers.status.success(),
        "systemd-sysusers: {}",
        text(&sysusers)
    );
    let tmpfiles = run(Command::new("systemd-tmpfiles")
        .arg(&root_arg)
        .args(["--create", "moebox.conf"]));
    assert!(
        tmpfiles.status.success() && text(&tmpfiles).trim().is_empty(),
        "systemd-tmpfiles: {}",
        text(&tmpfiles)
    );

    let engine_group = id_of(root.path(), "group", "moebox-engine");
    let gateway = id_of(root.path(), "passwd", "moebox");
    let gateway_group = id_of(root.path(), "group", "moebox");
    id_of(root.path(), "passwd", "moebox-engine");
    // Engines (group moebox-engine) create their sockets here; the sticky bit keeps one from
    // replacing another's; others have no access at all.
    assert_eq!(
        stat(&root.path().join("run/moebox")),
        (0, engine_group, 0o1770)
    );
    for state in ["var/lib/moebox", "var/lib/moebox/tls"] {
        assert_eq!(
            stat(&root.path().join(state)),
            (gateway, gateway_group, 0o700),
            "{state}"
        );
    }
    // The gateway unit joins the group its engine sockets belong to.
    let gateway_unit =
        std::fs::read_to_string(systemd_dir().join("moebox-gateway.service")).expect("unit");
    assert!(gateway_unit.contains("\nSupplementaryGroups=moebox-engine\n"));
    let engine_unit =
        std::fs::read_to_string(systemd_dir().join("moebox-engine@.service")).expect("unit");
    assert!(engine_unit.contains("\nGroup=moebox-engine\n"));
}
