//! The whole provisioning sequence over captured trees (see `tests/data/README.md`): the
//! synthesized two-A100 tree `tests/data/a100x2` and the real capture from an H200 host
//! `tests/data/h200x1`, and faulty variants derived from each here, with recorded NVML answers
//! and a fake smoke test. Every variant asserts the exact set of verdicts that change from that
//! tree's healthy baseline.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use moebox_config::ProvisionConfig;
use moebox_provision::{
    FixedNvml, Host, NoRepair, NvmlState, Repair, Report, SmokeTest, Sysroot, Verdict,
    nvml::{NvmlFailure, NvmlSnapshot},
    provision,
    repair::DeviceNode,
    smoke::SmokeRun,
};
use tempfile::TempDir;

use Verdict::{Fail, Pass, Skip, Warn};

const SECOND_GPU: &str = "0000:ca:00.0";

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// The synthesized two-A100 tree.
const A100: &str = "a100x2";

/// A writable copy of the healthy synthesized A100 tree (symlinks kept as symlinks).
fn tree() -> TempDir {
    copy_of(A100)
}

/// A writable copy of `tests/data/<name>` (symlinks kept as symlinks, absolute ones too).
fn copy_of(name: &str) -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_tree(&data().join(name), dir.path());
    dir
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        let kind = entry.file_type().expect("file type");
        if kind.is_symlink() {
            let link = std::fs::read_link(entry.path()).expect("read_link");
            std::os::unix::fs::symlink(link, &target).expect("symlink");
        } else if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn edit(root: &Path, path: &str, change: impl FnOnce(String) -> String) {
    let path = root.join(path);
    let text = std::fs::read_to_string(&path).expect("read");
    std::fs::write(&path, change(text)).expect("write");
}

fn remove(root: &Path, path: &str) {
    let path = root.join(path);
    if path.is_dir() {
        std::fs::remove_dir_all(&path).expect("remove dir");
    } else {
        std::fs::remove_file(&path).expect("remove file");
    }
}

fn relink(root: &Path, path: &str, target: &str) {
    let path = root.join(path);
    std::fs::remove_file(&path).expect("remove link");
    std::os::unix::fs::symlink(target, &path).expect("symlink");
}

/// The NVML answers recorded for the A100 tree.
fn nvml() -> NvmlSnapshot {
    recorded_nvml(A100)
}

/// `tests/data/<name>.nvml.json`.
fn recorded_nvml(name: &str) -> NvmlSnapshot {
    let path = data().join(format!("{name}.nvml.json"));
    let text = std::fs::read_to_string(&path).expect("nvml.json");
    match serde_json::from_str(&text).expect("NvmlState JSON") {
        NvmlState::Loaded(snapshot) => snapshot,
        other => panic!("{} is {other:?}", path.display()),
    }
}

fn without_second_gpu(mut snapshot: NvmlSnapshot) -> NvmlSnapshot {
    snapshot.devices.retain(|d| d.pci_bus_id != SECOND_GPU);
    snapshot
}

const CPU_IDS: [u32; 4] = [469, 12, 88, 3];

/// Greedy ids per device: the CPU's, and per GPU what the test says.
struct FakeSmoke {
    cpu: Result<Vec<u32>, String>,
    cuda: BTreeMap<u32, Result<Vec<u32>, String>>,
}

impl FakeSmoke {
    fn healthy() -> Self {
        Self {
            cpu: Ok(CPU_IDS.to_vec()),
            cuda: BTreeMap::new(),
        }
    }
}

impl SmokeTest for FakeSmoke {
    fn cpu_reference(&mut self) -> Result<SmokeRun, String> {
        self.cpu.clone().map(|ids| run("cpu", ids))
    }

    fn cuda(&mut self, device_id: u32) -> Result<SmokeRun, String> {
        self.cuda
            .get(&device_id)
            .cloned()
            .unwrap_or_else(|| Ok(CPU_IDS.to_vec()))
            .map(|ids| run(&format!("cuda:{device_id}"), ids))
    }
}

fn run(device: &str, output_ids: Vec<u32>) -> SmokeRun {
    SmokeRun {
        prompt_ids: vec![1, 2, 3],
        output_ids,
        device: device.to_owned(),
        elapsed: Duration::from_millis(120),
    }
}

/// Repairs that change the captured tree the way the real ones change the machine.
struct TreeRepair {
    root: PathBuf,
    log: Vec<String>,
}

impl Repair for TreeRepair {
    fn enabled(&self) -> bool {
        true
    }

    fn load_module(&mut self, module: &str) -> Result<(), String> {
        self.log.push(format!("modprobe {module}"));
        edit(&self.root, "proc/modules", |t| {
            format!("{module} 1000 0 - Live 0x0 (OE)\n{t}")
        });
        if module == "nvidia_uvm" {
            edit(&self.root, "proc/devices", |t| {
                t.replace(
                    "Character devices:\n",
                    "Character devices:\n508 nvidia-uvm\n",
                )
            });
        }
        Ok(())
    }

    fn create_device_node(&mut self, node: &DeviceNode) -> Result<(), String> {
        self.log.push(format!("create {}", node.path));
        let path = self.root.join(node.path.trim_start_matches('/'));
        std::fs::write(path, format!("c {}:{}\n", node.major, node.minor))
            .map_err(|e| e.to_string())
    }
}

/// An artefact list of one file that matches, in its own folder.
fn artefacts() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("libonnxruntime.so.1.31.1"), "").expect("write");
    let list = dir.path().join("SHA256SUMS");
    std::fs::write(
        &list,
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  libonnxruntime.so.1.31.1\n",
    )
    .expect("write");
    (dir, list)
}

struct Run {
    nvml: NvmlState,
    smoke: FakeSmoke,
    repair: Box<dyn Repair>,
    config: ProvisionConfig,
}

impl Run {
    fn new() -> Self {
        Self {
            nvml: NvmlState::Loaded(nvml()),
            smoke: FakeSmoke::healthy(),
            repair: Box::new(NoRepair),
            config: ProvisionConfig::default(),
        }
    }

    fn on(self, root: &Path) -> Report {
        let (_keep, list) = artefacts();
        let mut config = self.config;
        config.artefacts = list;
        let mut host = Host {
            sysroot: Sysroot::captured(root),
            nvml: Box::new(FixedNvml(self.nvml)),
            repair: self.repair,
            smoke: Some(Box::new(self.smoke)),
        };
        provision(&config, &mut host, &mut |_| {})
    }
}

type Key = (String, Option<u32>);

fn verdicts(report: &Report) -> BTreeMap<Key, Verdict> {
    let mut map = BTreeMap::new();
    for check in &report.checks {
        let key = (check.id.clone(), check.gpu.as_ref().map(|g| g.index));
        assert!(
            map.insert(key.clone(), check.verdict).is_none(),
            "two rows for {key:?}"
        );
    }
    map
}

fn baseline() -> BTreeMap<Key, Verdict> {
    let dir = tree();
    verdicts(&Run::new().on(dir.path()))
}

/// What changed from the A100 baseline: a new verdict, or `None` for a row that is gone.
fn changes(report: &Report) -> Vec<(&'static str, Option<u32>, Option<Verdict>)> {
    changes_from(&baseline(), report)
}

fn changes_from(
    before: &BTreeMap<Key, Verdict>,
    report: &Report,
) -> Vec<(&'static str, Option<u32>, Option<Verdict>)> {
    let after = verdicts(report);
    let mut changed = Vec::new();
    for (key, verdict) in before {
        match after.get(key) {
            Some(now) if now == verdict => {}
            now => changed.push((leak(&key.0), key.1, now.copied())),
        }
    }
    for (key, verdict) in &after {
        if !before.contains_key(key) {
            changed.push((leak(&key.0), key.1, Some(*verdict)));
        }
    }
    changed
}

fn leak(id: &str) -> &'static str {
    Box::leak(id.to_owned().into_boxed_str())
}

fn summary<'a>(report: &'a Report, id: &str, gpu: Option<u32>) -> &'a str {
    &report
        .find(id, gpu)
        .unwrap_or_else(|| panic!("no {id} {gpu:?} in {}", report.to_table()))
        .summary
}

/// Every row of every NVML health check for `gpu`.
fn health_rows(
    gpu: u32,
    verdict: Option<Verdict>,
) -> Vec<(&'static str, Option<u32>, Option<Verdict>)> {
    [
        "persistence_mode",
        "ecc",
        "row_remapping",
        "mig_mode",
        "temperature",
        "power_limit",
    ]
    .into_iter()
    .map(|id| (id, Some(gpu), verdict))
    .collect()
}

fn sorted(
    mut v: Vec<(&'static str, Option<u32>, Option<Verdict>)>,
) -> Vec<(&'static str, Option<u32>, Option<Verdict>)> {
    v.sort();
    v
}

#[test]
fn healthy_tree_passes_every_check() {
    let dir = tree();
    let report = Run::new().on(dir.path());
    let ids: Vec<(&str, Option<u32>)> = report
        .checks
        .iter()
        .map(|c| (c.id.as_str(), c.gpu.as_ref().map(|g| g.index)))
        .collect();
    let per_gpu = |id| [(id, Some(0)), (id, Some(1))];
    let mut expected = vec![
        ("gpus_present", None),
        ("nouveau_absent", None),
        ("kernel_modules", None),
    ];
    expected.extend(per_gpu("gpu_driver_binding"));
    expected.extend([
        ("nvml", None),
        ("driver_library_version", None),
        ("driver_minimum", None),
        ("device_nodes", None),
    ]);
    for id in [
        "persistence_mode",
        "ecc",
        "row_remapping",
        "mig_mode",
        "temperature",
        "power_limit",
        "pcie_link",
        "xid_errors",
    ] {
        expected.extend(per_gpu(id));
    }
    expected.extend([("artefacts", None), ("cpu_reference", None)]);
    expected.extend(per_gpu("cuda_smoke"));
    assert_eq!(ids, expected);
    let not_passing: Vec<_> = report.checks.iter().filter(|c| c.verdict != Pass).collect();
    assert!(not_passing.is_empty(), "{}", report.to_table());
    assert_eq!(report.exit_code(), 0);
    assert_eq!(
        summary(&report, "gpus_present", None),
        "found 2 NVIDIA GPUs (2 × A100 PCIe 80GB)"
    );
    assert_eq!(
        summary(&report, "driver_library_version", None),
        "kernel module and user-space driver are both 580.95.05"
    );
    assert_eq!(
        summary(&report, "device_nodes", None),
        "/dev/nvidiactl, /dev/nvidia0, /dev/nvidia1, /dev/nvidia-uvm, /dev/nvidia-uvm-tools present"
    );
    assert_eq!(summary(&report, "pcie_link", Some(1)), "x16, Gen4 capable");
    let link = report.find("pcie_link", Some(1)).expect("pcie_link");
    assert!(
        link.evidence
            .iter()
            .any(|e| e.contains("Gen1 now, Gen4 capable")),
        "{:?}",
        link.evidence
    );
    assert_eq!(report.gpus.len(), 2);
    assert_eq!(report.gpus[1].address, SECOND_GPU);
    assert_eq!(report.gpus[1].numa_node, Some(1));
}

#[test]
fn captured_tree_without_nvml_or_smoke_passes_what_it_can_read() {
    let dir = tree();
    let (_keep, list) = artefacts();
    let config = ProvisionConfig {
        artefacts: list,
        ..ProvisionConfig::default()
    };
    let mut host = Host::captured(Sysroot::captured(dir.path()));
    let report = provision(&config, &mut host, &mut |_| {});
    let mut expected = vec![
        ("nvml", None, Some(Skip)),
        ("cpu_reference", None, Some(Skip)),
    ];
    expected.extend(health_rows(0, Some(Skip)));
    expected.extend(health_rows(1, Some(Skip)));
    expected.extend([
        ("cuda_smoke", Some(0), Some(Skip)),
        ("cuda_smoke", Some(1), Some(Skip)),
    ]);
    assert_eq!(sorted(changes(&report)), sorted(expected));
    assert_eq!(report.exit_code(), 0);
    assert_eq!(
        summary(&report, "ecc", Some(0)),
        "not run on a captured tree (--sysroot)"
    );
}

#[test]
fn gpu_missing_from_the_bus_fails_the_count() {
    let dir = tree();
    let root = dir.path();
    remove(root, &format!("sys/bus/pci/devices/{SECOND_GPU}"));
    remove(root, &format!("proc/driver/nvidia/gpus/{SECOND_GPU}"));
    remove(root, "dev/nvidia1");
    let report = Run {
        nvml: NvmlState::Loaded(without_second_gpu(nvml())),
        ..Run::new()
    }
    .on(root);
    let mut expected = vec![("gpus_present", None, Some(Fail))];
    for id in [
        "gpu_driver_binding",
        "pcie_link",
        "xid_errors",
        "cuda_smoke",
    ] {
        expected.push((id, Some(1), None));
    }
    expected.extend(health_rows(1, None));
    assert_eq!(sorted(changes(&report)), sorted(expected));
    assert_eq!(
        summary(&report, "gpus_present", None),
        "found 1 NVIDIA GPU, expected 2"
    );
    assert_eq!(report.exit_code(), 1);
}

#[test]
fn nouveau_holding_a_gpu_fails_module_and_binding() {
    let dir = tree();
    let root = dir.path();
    edit(root, "proc/modules", |t| {
        format!("{t}nouveau 2686976 0 - Live 0x0000000000000000\n")
    });
    relink(
        root,
        &format!("sys/bus/pci/devices/{SECOND_GPU}/driver"),
        "../../../bus/pci/drivers/nouveau",
    );
    remove(root, &format!("proc/driver/nvidia/gpus/{SECOND_GPU}"));
    remove(root, "dev/nvidia1");
    let report = Run {
        nvml: NvmlState::Loaded(without_second_gpu(nvml())),
        ..Run::new()
    }
    .on(root);
    let mut expected = vec![
        ("nouveau_absent", None, Some(Fail)),
        ("gpu_driver_binding", Some(1), Some(Fail)),
        ("cuda_smoke", Some(1), Some(Skip)),
    ];
    expected.extend(health_rows(1, Some(Skip)));
    assert_eq!(sorted(changes(&report)), sorted(expected));
    assert_eq!(
        summary(&report, "gpu_driver_binding", Some(1)),
        "bound to nouveau, not nvidia"
    );
    assert_eq!(
        summary(&report, "cuda_smoke", Some(1)),
        "not run: this GPU failed gpu_driver_binding"
    );
    let remedy = report
        .find("nouveau_absent", None)
        .and_then(|c| c.remedy.as_deref())
        .unwrap_or_default();
    assert!(
        remedy.contains("modprobe.d") && remedy.contains("update-initramfs"),
        "{remedy}"
    );
}

#[test]
fn link_trained_at_x8_fails_pcie_link() {
    let dir = tree();
    edit(
        dir.path(),
        &format!("sys/bus/pci/devices/{SECOND_GPU}/current_link_width"),
        |_| "8\n".to_owned(),
    );
    let report = Run::new().on(dir.path());
    assert_eq!(changes(&report), vec![("pcie_link", Some(1), Some(Fail))]);
    assert_eq!(
        summary(&report, "pcie_link", Some(1)),
        "link trained at x8, the GPU is x16"
    );
    assert_eq!(report.exit_code(), 1);
}

#[test]
fn xid_79_in_the_kernel_log_fails_that_gpu() {
    let dir = tree();
    edit(dir.path(), "dev/kmsg", |t| {
        format!(
            "{t}3,1100,812000000,-;NVRM: Xid (PCI:0000:ca:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.\n"
        )
    });
    let report = Run::new().on(dir.path());
    assert_eq!(
        sorted(changes(&report)),
        sorted(vec![
            ("xid_errors", Some(1), Some(Fail)),
            ("cuda_smoke", Some(1), Some(Skip)),
        ])
    );
    assert_eq!(
        summary(&report, "xid_errors", Some(1)),
        "Xid 79 ×1 since boot (GPU has fallen off the bus)"
    );
    let check = report.find("xid_errors", Some(1)).expect("row");
    assert!(
        check.evidence[0].starts_with("NVRM: Xid (PCI:0000:ca:00): 79"),
        "{:?}",
        check.evidence
    );
}

#[test]
fn xid_from_a_gpu_no_longer_on_the_bus_is_reported_on_its_own_row() {
    let dir = tree();
    edit(dir.path(), "dev/kmsg", |t| {
        format!("{t}[  812.5] NVRM: Xid (PCI:0000:b1:00): 79, pid=1, GPU has fallen off the bus.\n")
    });
    let report = Run::new().on(dir.path());
    assert_eq!(changes(&report), vec![("xid_errors", None, Some(Fail))]);
    assert_eq!(
        summary(&report, "xid_errors", None),
        "Xid 79 ×1 since boot (GPU has fallen off the bus) from 0000:b1:00, not among the GPUs found"
    );
}

#[test]
fn application_xids_warn() {
    let dir = tree();
    edit(dir.path(), "dev/kmsg", |t| {
        format!(
            "{t}4,1200,9000000,-;NVRM: Xid (PCI:0000:17:00): 13, pid=4242, name=moebox, Graphics Exception\n"
        )
    });
    let report = Run::new().on(dir.path());
    assert_eq!(changes(&report), vec![("xid_errors", Some(0), Some(Warn))]);
    assert_eq!(report.exit_code(), 0);
}

/// The kernel module was upgraded under a running user space: NVML refuses to start.
#[test]
fn module_and_library_version_mismatch_fails_and_blocks_cuda() {
    let dir = tree();
    let root = dir.path();
    edit(root, "sys/module/nvidia/version", |_| {
        "580.82.07\n".to_owned()
    });
    edit(root, "proc/driver/nvidia/version", |t| {
        t.replace("580.95.05", "580.82.07")
    });
    let report = Run {
        nvml: NvmlState::Unavailable {
            failure: NvmlFailure::VersionMismatch,
            message: "libnvidia-ml.so.1: the NVML library version does not match the running kernel driver".to_owned(),
        },
        ..Run::new()
    }
    .on(root);
    let mut expected = vec![
        ("nvml", None, Some(Fail)),
        ("driver_library_version", None, Some(Fail)),
        ("cuda_smoke", Some(0), Some(Skip)),
        ("cuda_smoke", Some(1), Some(Skip)),
    ];
    expected.extend(health_rows(0, Some(Skip)));
    expected.extend(health_rows(1, Some(Skip)));
    assert_eq!(sorted(changes(&report)), sorted(expected));
    assert_eq!(
        summary(&report, "driver_library_version", None),
        "kernel module 580.82.07, user-space 580.95.05 (/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1); kernel module 580.82.07, user-space 580.95.05 (/usr/lib/x86_64-linux-gnu/libcuda.so.1); kernel module 580.82.07, NVML reports a driver/library version mismatch"
    );
    assert_eq!(
        summary(&report, "cuda_smoke", Some(0)),
        "not run: nvml, driver_library_version failed"
    );
}

#[test]
fn version_mismatch_is_found_from_files_alone_on_a_captured_tree() {
    let dir = tree();
    relink(
        dir.path(),
        "usr/lib/x86_64-linux-gnu/libcuda.so.1",
        "libcuda.so.580.82.07",
    );
    let (_keep, list) = artefacts();
    let config = ProvisionConfig {
        artefacts: list,
        ..ProvisionConfig::default()
    };
    let report = provision(
        &config,
        &mut Host::captured(Sysroot::captured(dir.path())),
        &mut |_| {},
    );
    let check = report.find("driver_library_version", None).expect("row");
    assert_eq!(check.verdict, Fail);
    assert_eq!(
        check.summary,
        "kernel module 580.95.05, user-space 580.82.07 (/usr/lib/x86_64-linux-gnu/libcuda.so.1)"
    );
}

#[test]
fn a_550_driver_is_too_old_for_cuda_13() {
    let dir = tree();
    let root = dir.path();
    edit(root, "sys/module/nvidia/version", |_| {
        "550.163.01\n".to_owned()
    });
    for lib in ["libnvidia-ml", "libcuda"] {
        relink(
            root,
            &format!("usr/lib/x86_64-linux-gnu/{lib}.so.1"),
            &format!("{lib}.so.550.163.01"),
        );
    }
    let mut snapshot = nvml();
    snapshot.driver_version = "550.163.01".to_owned();
    snapshot.cuda_driver_version = moebox_provision::nvml::Reading::Value(12040);
    let report = Run {
        nvml: NvmlState::Loaded(snapshot),
        ..Run::new()
    }
    .on(root);
    assert_eq!(
        sorted(changes(&report)),
        sorted(vec![
            ("driver_minimum", None, Some(Fail)),
            ("cuda_smoke", Some(0), Some(Skip)),
            ("cuda_smoke", Some(1), Some(Skip)),
        ])
    );
    assert_eq!(
        summary(&report, "driver_minimum", None),
        "driver 550.163.01 is older than 580.65.06, the minimum for CUDA 13 for ONNX Runtime 1.31.1"
    );
}

fn unload_uvm(root: &Path) {
    edit(root, "proc/modules", |t| {
        t.lines()
            .filter(|l| !l.starts_with("nvidia_uvm "))
            .map(|l| format!("{l}\n"))
            .collect()
    });
    edit(root, "proc/devices", |t| t.replace("508 nvidia-uvm\n", ""));
    remove(root, "dev/nvidia-uvm");
    remove(root, "dev/nvidia-uvm-tools");
}

#[test]
fn missing_module_fails_without_repairs() {
    let dir = tree();
    unload_uvm(dir.path());
    let report = Run::new().on(dir.path());
    assert_eq!(
        sorted(changes(&report)),
        sorted(vec![
            ("kernel_modules", None, Some(Fail)),
            ("device_nodes", None, Some(Fail)),
            ("cuda_smoke", Some(0), Some(Skip)),
            ("cuda_smoke", Some(1), Some(Skip)),
        ])
    );
    assert_eq!(
        summary(&report, "kernel_modules", None),
        "not loaded: nvidia_uvm"
    );
    assert_eq!(
        summary(&report, "device_nodes", None),
        "/proc/devices has no nvidia-uvm character device"
    );
}

#[test]
fn missing_module_and_nodes_are_repaired() {
    let dir = tree();
    unload_uvm(dir.path());
    remove(dir.path(), "dev/nvidia1");
    let repair = TreeRepair {
        root: dir.path().to_owned(),
        log: Vec::new(),
    };
    let report = Run {
        repair: Box::new(repair),
        ..Run::new()
    }
    .on(dir.path());
    assert!(changes(&report).is_empty(), "{}", report.to_table());
    assert_eq!(
        summary(&report, "kernel_modules", None),
        "nvidia and nvidia_uvm loaded (by this run)"
    );
    assert_eq!(
        summary(&report, "device_nodes", None),
        "/dev/nvidiactl, /dev/nvidia0, /dev/nvidia1, /dev/nvidia-uvm, /dev/nvidia-uvm-tools present (created /dev/nvidia1, /dev/nvidia-uvm, /dev/nvidia-uvm-tools)"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("dev/nvidia-uvm-tools")).expect("created"),
        "c 508:1\n"
    );
}

#[test]
fn a_device_node_with_the_wrong_numbers_fails() {
    let dir = tree();
    std::fs::write(dir.path().join("dev/nvidia1"), "c 195:7\n").expect("write");
    let report = Run::new().on(dir.path());
    assert_eq!(
        sorted(changes(&report)),
        sorted(vec![
            ("device_nodes", None, Some(Fail)),
            ("cuda_smoke", Some(0), Some(Skip)),
            ("cuda_smoke", Some(1), Some(Skip)),
        ])
    );
    assert_eq!(
        summary(&report, "device_nodes", None),
        "/dev/nvidia1 is c 195:7, expected c 195:1"
    );
}

fn with_second_gpu(change: impl FnOnce(&mut moebox_provision::nvml::NvmlGpu)) -> Report {
    let dir = tree();
    let mut snapshot = nvml();
    if let Some(gpu) = snapshot
        .devices
        .iter_mut()
        .find(|d| d.pci_bus_id == SECOND_GPU)
    {
        change(gpu);
    }
    Run {
        nvml: NvmlState::Loaded(snapshot),
        ..Run::new()
    }
    .on(dir.path())
}

/// A change to the second GPU's NVML answers, the verdicts that change, the first one's summary.
type NvmlCase = (
    &'static str,
    Box<dyn FnOnce(&mut moebox_provision::nvml::NvmlGpu)>,
    Vec<(&'static str, Option<u32>, Option<Verdict>)>,
    &'static str,
);

#[test]
fn nvml_health_faults_have_exact_verdicts() {
    use moebox_provision::nvml::{EccMode, MigModes, Reading, RemappedRows};
    let smoke_skip = ("cuda_smoke", Some(1), Some(Skip));
    let cases: Vec<NvmlCase> = vec![
        (
            "ecc off",
            Box::new(|g| {
                g.ecc = Reading::Value(EccMode {
                    current: false,
                    pending: false,
                })
            }),
            vec![("ecc", Some(1), Some(Fail)), smoke_skip],
            "ECC is off",
        ),
        (
            "ecc turning off",
            Box::new(|g| {
                g.ecc = Reading::Value(EccMode {
                    current: true,
                    pending: false,
                })
            }),
            vec![("ecc", Some(1), Some(Warn))],
            "ECC turns off at the next reset",
        ),
        (
            "uncorrected errors",
            Box::new(|g| g.ecc_uncorrected_volatile = Reading::Value(3)),
            vec![("ecc", Some(1), Some(Fail)), smoke_skip],
            "3 uncorrected ECC errors since the driver loaded",
        ),
        (
            "row remap pending",
            Box::new(|g| {
                g.remapped_rows = Reading::Value(RemappedRows {
                    corrected: 0,
                    uncorrected: 1,
                    pending: true,
                    failure: false,
                })
            }),
            vec![("row_remapping", Some(1), Some(Fail)), smoke_skip],
            "a row remap is pending",
        ),
        (
            "row remap failure",
            Box::new(|g| {
                g.remapped_rows = Reading::Value(RemappedRows {
                    corrected: 0,
                    uncorrected: 9,
                    pending: false,
                    failure: true,
                })
            }),
            vec![("row_remapping", Some(1), Some(Fail)), smoke_skip],
            "row remapping failed: no spare rows left",
        ),
        (
            "mig on",
            Box::new(|g| {
                g.mig = Reading::Value(MigModes {
                    current: true,
                    pending: true,
                })
            }),
            vec![("mig_mode", Some(1), Some(Fail)), smoke_skip],
            "MIG is on, expected off",
        ),
        (
            "persistence off",
            Box::new(|g| g.persistence_mode = Reading::Value(false)),
            vec![("persistence_mode", Some(1), Some(Warn))],
            "persistence mode off",
        ),
        (
            "hot",
            Box::new(|g| g.temperature_celsius = Reading::Value(83)),
            vec![("temperature", Some(1), Some(Warn))],
            "83 °C, above provision.temperature_warn_celsius = 80",
        ),
        (
            "throttling",
            Box::new(|g| g.temperature_celsius = Reading::Value(90)),
            vec![("temperature", Some(1), Some(Fail)), smoke_skip],
            "90 °C, at or above the slowdown threshold 89 °C",
        ),
        (
            "power capped",
            Box::new(|g| g.power_limit_milliwatts = Reading::Value(200_000)),
            vec![("power_limit", Some(1), Some(Warn))],
            "power limit 200 W is below 90% of the default 300 W",
        ),
        (
            "gen3 slot",
            Box::new(|g| g.pcie_max_generation = Reading::Value(3)),
            vec![("pcie_link", Some(1), Some(Warn))],
            "the slot limits the link to Gen3, the GPU is Gen4",
        ),
        (
            "no ecc support",
            Box::new(|g| g.ecc = Reading::NotSupported),
            vec![("ecc", Some(1), Some(Warn))],
            "this GPU has no ECC",
        ),
        (
            "nvml read error",
            Box::new(|g| g.temperature_celsius = Reading::Error("GPU is lost".into())),
            vec![("temperature", Some(1), Some(Warn))],
            "temperature: GPU is lost",
        ),
    ];
    for (name, change, expected, expected_summary) in cases {
        let report = with_second_gpu(change);
        assert_eq!(sorted(changes(&report)), sorted(expected.clone()), "{name}");
        let (id, gpu, _) = expected[0];
        assert_eq!(summary(&report, id, gpu), expected_summary, "{name}");
    }
}

#[test]
fn cuda_results_that_differ_from_the_cpu_fail() {
    let dir = tree();
    let mut smoke = FakeSmoke::healthy();
    smoke.cuda.insert(1, Ok(vec![469, 12, 90, 3]));
    smoke.cuda.insert(
        0,
        Err("CUDA error: no kernel image is available".to_owned()),
    );
    let report = Run {
        smoke,
        ..Run::new()
    }
    .on(dir.path());
    assert_eq!(
        sorted(changes(&report)),
        sorted(vec![
            ("cuda_smoke", Some(0), Some(Fail)),
            ("cuda_smoke", Some(1), Some(Fail)),
        ])
    );
    assert_eq!(
        summary(&report, "cuda_smoke", Some(1)),
        "greedy ids differ from the CPU provider's at token 2 (cuda 90, cpu 88)"
    );
    assert_eq!(
        summary(&report, "cuda_smoke", Some(0)),
        "the CUDA provider failed: CUDA error: no kernel image is available"
    );
}

#[test]
fn no_cpu_reference_fails_and_skips_the_gpus() {
    let dir = tree();
    let smoke = FakeSmoke {
        cpu: Err("model folder not found".to_owned()),
        cuda: BTreeMap::new(),
    };
    let report = Run {
        smoke,
        ..Run::new()
    }
    .on(dir.path());
    assert_eq!(
        sorted(changes(&report)),
        sorted(vec![
            ("cpu_reference", None, Some(Fail)),
            ("cuda_smoke", Some(0), Some(Skip)),
            ("cuda_smoke", Some(1), Some(Skip)),
        ])
    );
}

#[test]
fn an_artefact_that_changed_fails() {
    let (list_dir, list) = artefacts();
    std::fs::write(list_dir.path().join("libonnxruntime.so.1.31.1"), "tampered").expect("write");
    let check = moebox_provision::checks::artefacts::artefacts(&list);
    assert_eq!(check.verdict, Fail);
    assert!(
        check.summary.starts_with("1 of 1 artefact do not match: "),
        "{}",
        check.summary
    );
    let missing = moebox_provision::checks::artefacts::artefacts(&list_dir.path().join("none"));
    assert_eq!(missing.verdict, Fail);
    assert!(
        missing.summary.ends_with("/none not found"),
        "{}",
        missing.summary
    );
}

fn no_gpu_tree() -> TempDir {
    let dir = tree();
    for gpu in ["0000:17:00.0", SECOND_GPU] {
        remove(dir.path(), &format!("sys/bus/pci/devices/{gpu}"));
    }
    dir
}

#[test]
fn no_gpu_fails_unless_cpu_only_is_allowed() {
    let dir = no_gpu_tree();
    let report = Run::new().on(dir.path());
    assert_eq!(
        verdicts(&report).into_iter().collect::<Vec<_>>(),
        vec![
            (("artefacts".to_owned(), None), Pass),
            (("cpu_reference".to_owned(), None), Pass),
            (("device_nodes".to_owned(), None), Skip),
            (("driver_library_version".to_owned(), None), Skip),
            (("driver_minimum".to_owned(), None), Skip),
            (("gpus_present".to_owned(), None), Fail),
            (("kernel_modules".to_owned(), None), Skip),
            (("nouveau_absent".to_owned(), None), Skip),
            (("nvml".to_owned(), None), Skip),
            (("xid_errors".to_owned(), None), Skip),
        ]
    );
    assert_eq!(
        summary(&report, "gpus_present", None),
        "no NVIDIA GPU found (expected 2)"
    );
    assert_eq!(report.exit_code(), 1);

    let mut run = Run::new();
    run.config.allow_cpu_only = true;
    let report = run.on(dir.path());
    assert_eq!(
        report.find("gpus_present", None).map(|c| c.verdict),
        Some(Warn)
    );
    assert_eq!(report.exit_code(), 0);
}

#[test]
fn other_gpus_and_extra_gpus_warn() {
    let dir = tree();
    edit(
        dir.path(),
        &format!("sys/bus/pci/devices/{SECOND_GPU}/device"),
        |_| "0x2330\n".to_owned(),
    );
    let mut run = Run::new();
    run.config.expected_gpus = 1;
    let report = run.on(dir.path());
    assert_eq!(changes(&report), vec![("gpus_present", None, Some(Warn))]);
    assert_eq!(
        summary(&report, "gpus_present", None),
        "found 2 NVIDIA GPUs, expected 1; other NVIDIA GPU, not an A100: 0000:ca:00.0 is 10de:2330"
    );
}

#[test]
fn report_json_holds_the_nvml_snapshot_for_reuse_as_test_input() {
    let dir = tree();
    let report = Run::new().on(dir.path());
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("JSON");
    let state: NvmlState = serde_json::from_value(json["nvml"].clone()).expect("NvmlState");
    assert_eq!(state, NvmlState::Loaded(nvml()));
    assert_eq!(json["verdict"], "pass");
    assert_eq!(json["checks"][0]["id"], "gpus_present");
}

/// Every `tests/data/<tree>.expected.json` (`{"expected_gpus": N, "verdicts": {"id": "pass",
/// "id:gpu0": "warn", ...}}`) is run on `tests/data/<tree>/`, with `<tree>.nvml.json` as NVML's
/// answers when present, and must give exactly those verdicts. A real capture from a GPU host
/// becomes a test by adding these three files (see tests/data/README.md).
#[test]
fn captured_trees_match_their_recorded_verdicts() {
    let mut trees = 0;
    for entry in std::fs::read_dir(data()).expect("tests/data") {
        let path = entry.expect("entry").path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".expected.json"))
        else {
            continue;
        };
        trees += 1;
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("JSON");
        let nvml_path = data().join(format!("{name}.nvml.json"));
        let nvml = if nvml_path.is_file() {
            serde_json::from_str(&std::fs::read_to_string(&nvml_path).expect("read"))
                .expect("NvmlState JSON")
        } else {
            NvmlState::NotConsulted {
                reason: moebox_provision::CAPTURED_TREE.to_owned(),
            }
        };
        let mut run = Run { nvml, ..Run::new() };
        run.config.expected_gpus = expected["expected_gpus"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(2);
        let report = run.on(&data().join(name));
        let found: BTreeMap<String, String> = report
            .checks
            .iter()
            .map(|c| {
                let key = match &c.gpu {
                    Some(gpu) => format!("{}:gpu{}", c.id, gpu.index),
                    None => c.id.clone(),
                };
                (key, c.verdict.as_str().to_owned())
            })
            .collect();
        let wanted: BTreeMap<String, String> =
            serde_json::from_value(expected["verdicts"].clone()).expect("verdicts map");
        assert_eq!(found, wanted, "{name}:\n{}", report.to_table());
    }
    assert!(trees > 0, "no tests/data/*.expected.json");
}

#[test]
fn driver_not_loaded_fails_once_and_skips_what_depends_on_it() {
    let dir = tree();
    let root = dir.path();
    edit(root, "proc/modules", |t| {
        t.lines()
            .filter(|l| !l.starts_with("nvidia"))
            .map(|l| format!("{l}\n"))
            .collect()
    });
    for gpu in ["0000:17:00.0", SECOND_GPU] {
        remove(root, &format!("sys/bus/pci/devices/{gpu}/driver"));
    }
    for path in [
        "proc/driver/nvidia",
        "sys/module/nvidia",
        "sys/module/nvidia_uvm",
    ] {
        remove(root, path);
    }
    let report = Run {
        nvml: NvmlState::Unavailable {
            failure: NvmlFailure::DriverNotLoaded,
            message: "libnvidia-ml.so.1: the NVIDIA driver is not loaded".to_owned(),
        },
        ..Run::new()
    }
    .on(root);
    let mut expected = vec![
        ("kernel_modules", None, Some(Fail)),
        ("gpu_driver_binding", Some(0), Some(Fail)),
        ("gpu_driver_binding", Some(1), Some(Fail)),
        ("nvml", None, Some(Fail)),
        ("driver_library_version", None, Some(Skip)),
        ("driver_minimum", None, Some(Skip)),
        ("device_nodes", None, Some(Skip)),
        ("cuda_smoke", Some(0), Some(Skip)),
        ("cuda_smoke", Some(1), Some(Skip)),
    ];
    expected.extend(health_rows(0, Some(Skip)));
    expected.extend(health_rows(1, Some(Skip)));
    assert_eq!(sorted(changes(&report)), sorted(expected));
    assert_eq!(
        summary(&report, "kernel_modules", None),
        "not loaded: nvidia, nvidia_uvm"
    );
    assert_eq!(
        summary(&report, "gpu_driver_binding", Some(0)),
        "not bound to any driver (nvidia is not loaded)"
    );
    assert_eq!(
        summary(&report, "nvml", None),
        "NVML: the NVIDIA driver is not loaded"
    );
}

// The real capture: one H200 (10de:2335) in a virtual machine, driver 580.159.04 (open kernel
// module), user-space libraries under /usr/local/nvidia/lib64 reached through absolute links in
// /usr/lib. Its faulty variants are derived from it the same way as the A100 tree's.

/// The capture from an H200 host (`tests/gpu/capture-sysfs.sh`, 2026-11-26).
const H200: &str = "h200x1";
/// Its one GPU.
const H200_GPU: &str = "0000:00:06.0";

fn h200_tree() -> TempDir {
    copy_of(H200)
}

impl Run {
    /// The H200 host as it was: its NVML answers, one GPU expected.
    fn h200() -> Self {
        let mut run = Self {
            nvml: NvmlState::Loaded(recorded_nvml(H200)),
            ..Self::new()
        };
        run.config.expected_gpus = 1;
        run
    }
}

fn h200_changes(report: &Report) -> Vec<(&'static str, Option<u32>, Option<Verdict>)> {
    let dir = h200_tree();
    changes_from(&verdicts(&Run::h200().on(dir.path())), report)
}

/// The recorded NVML answers with no GPU in them.
fn h200_nvml_without_gpu() -> NvmlState {
    let mut snapshot = recorded_nvml(H200);
    snapshot.devices.clear();
    NvmlState::Loaded(snapshot)
}

/// `moebox provision --sysroot` on the capture, as `tests/gpu/run.sh` replays it.
fn replay(root: &Path) -> Report {
    let (_keep, list) = artefacts();
    let config = ProvisionConfig {
        artefacts: list,
        expected_gpus: 1,
        ..ProvisionConfig::default()
    };
    provision(
        &config,
        &mut Host::captured(Sysroot::captured(root)),
        &mut |_| {},
    )
}

#[test]
fn h200_capture_gives_the_live_runs_verdicts() {
    let dir = h200_tree();
    let report = Run::h200().on(dir.path());
    let not_passing: Vec<(&str, Verdict)> = report
        .checks
        .iter()
        .filter(|c| c.verdict != Pass)
        .map(|c| (c.id.as_str(), c.verdict))
        .collect();
    assert_eq!(
        not_passing,
        vec![("gpus_present", Warn)],
        "{}",
        report.to_table()
    );
    assert_eq!(report.checks.len(), 19);
    assert_eq!(report.exit_code(), 0);
    assert_eq!(
        summary(&report, "gpus_present", None),
        "other NVIDIA GPU, not an A100: 0000:00:06.0 is 10de:2335"
    );
    assert_eq!(
        summary(&report, "driver_library_version", None),
        "kernel module and user-space driver are both 580.159.04"
    );
    assert_eq!(
        report
            .find("driver_library_version", None)
            .expect("row")
            .evidence,
        vec![
            "/sys/module/nvidia/version: 580.159.04 (open kernel module)",
            "/usr/lib/libnvidia-ml.so.1 -> /usr/local/nvidia/lib64/libnvidia-ml.so.580.159.04: 580.159.04",
            "/usr/lib/libcuda.so.1 -> /usr/local/nvidia/lib64/libcuda.so.580.159.04: 580.159.04",
            "NVML driver version: 580.159.04",
        ]
    );
    assert_eq!(
        summary(&report, "device_nodes", None),
        "/dev/nvidiactl, /dev/nvidia0, /dev/nvidia-uvm, /dev/nvidia-uvm-tools present"
    );
    assert_eq!(summary(&report, "pcie_link", Some(0)), "x16, Gen5 capable");
    assert_eq!(summary(&report, "xid_errors", Some(0)), "no Xid since boot");
    assert_eq!(report.gpus.len(), 1);
    assert_eq!(report.gpus[0].address, H200_GPU);
    assert_eq!(report.gpus[0].numa_node, Some(-1));
}

/// The replay in the GPU run (`b.provision_sysroot`) failed driver_library_version: the
/// capture script kept `/usr/lib/libcuda.so.1 -> /usr/local/nvidia/lib64/libcuda.so.1` but not
/// the link it points at, and provision read only the first link of the chain (which on the
/// live machine left the check to NVML alone). With the whole chain in the tree and followed,
/// the replay passes everything a tree can show.
#[test]
fn h200_capture_replays_without_nvml_or_smoke() {
    let dir = h200_tree();
    let report = replay(dir.path());
    let mut expected = vec![
        ("nvml", None, Some(Skip)),
        ("cpu_reference", None, Some(Skip)),
        ("cuda_smoke", Some(0), Some(Skip)),
    ];
    expected.extend(health_rows(0, Some(Skip)));
    assert_eq!(sorted(h200_changes(&report)), sorted(expected));
    assert_eq!(
        (
            report.counts.pass,
            report.counts.warn,
            report.counts.fail,
            report.counts.skip
        ),
        (9, 1, 0, 9)
    );
    assert_eq!(report.exit_code(), 0);
    assert_eq!(
        summary(&report, "driver_library_version", None),
        "kernel module and user-space driver are both 580.159.04"
    );
}

#[test]
fn h200_capture_without_the_link_targets_names_the_broken_chain() {
    let dir = h200_tree();
    // What the capture script wrote before it followed the links.
    remove(dir.path(), "usr/local");
    let report = replay(dir.path());
    let check = report.find("driver_library_version", None).expect("row");
    assert_eq!(check.verdict, Fail);
    assert_eq!(
        check.summary,
        "no user-space driver version: /usr/lib/libnvidia-ml.so.1 ends at /usr/local/nvidia/lib64/libnvidia-ml.so.1, /usr/lib/libcuda.so.1 ends at /usr/local/nvidia/lib64/libcuda.so.1, which names no version"
    );
}

#[test]
fn h200_missing_from_the_bus_leaves_no_gpu() {
    let dir = h200_tree();
    let root = dir.path();
    remove(root, &format!("sys/bus/pci/devices/{H200_GPU}"));
    remove(root, &format!("proc/driver/nvidia/gpus/{H200_GPU}"));
    remove(root, "dev/nvidia0");
    let report = Run {
        nvml: h200_nvml_without_gpu(),
        ..Run::h200()
    }
    .on(root);
    let mut expected = vec![
        ("gpus_present", None, Some(Fail)),
        ("nouveau_absent", None, Some(Skip)),
        ("kernel_modules", None, Some(Skip)),
        ("nvml", None, Some(Skip)),
        ("driver_library_version", None, Some(Skip)),
        ("driver_minimum", None, Some(Skip)),
        ("device_nodes", None, Some(Skip)),
        ("xid_errors", None, Some(Skip)),
    ];
    for id in [
        "gpu_driver_binding",
        "pcie_link",
        "xid_errors",
        "cuda_smoke",
    ] {
        expected.push((id, Some(0), None));
    }
    expected.extend(health_rows(0, None));
    assert_eq!(sorted(h200_changes(&report)), sorted(expected));
    assert_eq!(
        summary(&report, "gpus_present", None),
        "no NVIDIA GPU found (expected 1)"
    );
    assert_eq!(report.exit_code(), 1);
}

#[test]
fn h200_held_by_nouveau_fails_module_and_binding() {
    let dir = h200_tree();
    let root = dir.path();
    edit(root, "proc/modules", |t| {
        format!("{t}nouveau 3104768 0 - Live 0xffffffffc1000000\n")
    });
    relink(
        root,
        &format!("sys/bus/pci/devices/{H200_GPU}/driver"),
        "../../../bus/pci/drivers/nouveau",
    );
    remove(root, &format!("proc/driver/nvidia/gpus/{H200_GPU}"));
    remove(root, "dev/nvidia0");
    let report = Run {
        nvml: h200_nvml_without_gpu(),
        ..Run::h200()
    }
    .on(root);
    let mut expected = vec![
        ("nouveau_absent", None, Some(Fail)),
        ("gpu_driver_binding", Some(0), Some(Fail)),
        ("cuda_smoke", Some(0), Some(Skip)),
    ];
    expected.extend(health_rows(0, Some(Skip)));
    assert_eq!(sorted(h200_changes(&report)), sorted(expected));
    assert_eq!(
        summary(&report, "gpu_driver_binding", Some(0)),
        "bound to nouveau, not nvidia"
    );
    assert_eq!(
        summary(&report, "cuda_smoke", Some(0)),
        "not run: this GPU failed gpu_driver_binding"
    );
    assert_eq!(
        summary(&report, "device_nodes", None),
        "/dev/nvidiactl, /dev/nvidia-uvm, /dev/nvidia-uvm-tools present"
    );
    assert_eq!(report.exit_code(), 1);
}

#[test]
fn h200_link_trained_at_x8_fails_pcie_link() {
    let dir = h200_tree();
    edit(
        dir.path(),
        &format!("sys/bus/pci/devices/{H200_GPU}/current_link_width"),
        |_| "8\n".to_owned(),
    );
    let report = Run::h200().on(dir.path());
    assert_eq!(
        h200_changes(&report),
        vec![("pcie_link", Some(0), Some(Fail))]
    );
    assert_eq!(
        summary(&report, "pcie_link", Some(0)),
        "link trained at x8, the GPU is x16"
    );
    assert_eq!(report.exit_code(), 1);
}

#[test]
fn h200_xid_79_in_the_kernel_log_fails_the_gpu() {
    let dir = h200_tree();
    // The capture's log is `dmesg` lines.
    edit(dir.path(), "dev/kmsg", |t| {
        format!(
            "{t}[  812.446011] NVRM: Xid (PCI:0000:00:06): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.\n"
        )
    });
    let report = Run::h200().on(dir.path());
    assert_eq!(
        sorted(h200_changes(&report)),
        sorted(vec![
            ("xid_errors", Some(0), Some(Fail)),
            ("cuda_smoke", Some(0), Some(Skip)),
        ])
    );
    assert_eq!(
        summary(&report, "xid_errors", Some(0)),
        "Xid 79 ×1 since boot (GPU has fallen off the bus)"
    );
    assert_eq!(report.exit_code(), 1);
}

/// The kernel module was replaced by an older one under the running user space: NVML refuses to
/// start, and the libraries at the end of the links say the other version.
#[test]
fn h200_module_and_library_version_mismatch_fails_and_blocks_cuda() {
    let dir = h200_tree();
    let root = dir.path();
    for module in ["nvidia", "nvidia_uvm"] {
        edit(root, &format!("sys/module/{module}/version"), |_| {
            "580.105.08\n".to_owned()
        });
    }
    edit(root, "proc/driver/nvidia/version", |t| {
        t.replace("580.159.04", "580.105.08")
    });
    let report = Run {
        nvml: NvmlState::Unavailable {
            failure: NvmlFailure::VersionMismatch,
            message: "libnvidia-ml.so.1: the NVML library version does not match the running kernel driver".to_owned(),
        },
        ..Run::h200()
    }
    .on(root);
    let mut expected = vec![
        ("nvml", None, Some(Fail)),
        ("driver_library_version", None, Some(Fail)),
        ("cuda_smoke", Some(0), Some(Skip)),
    ];
    expected.extend(health_rows(0, Some(Skip)));
    assert_eq!(sorted(h200_changes(&report)), sorted(expected));
    assert_eq!(
        summary(&report, "driver_library_version", None),
        "kernel module 580.105.08, user-space 580.159.04 (/usr/lib/libnvidia-ml.so.1); kernel module 580.105.08, user-space 580.159.04 (/usr/lib/libcuda.so.1); kernel module 580.105.08, NVML reports a driver/library version mismatch"
    );
    assert_eq!(
        summary(&report, "cuda_smoke", Some(0)),
        "not run: nvml, driver_library_version failed"
    );
}

/// Only libcuda was upgraded (at the end of its chain): the replay finds it from the files.
#[test]
fn h200_library_mismatch_is_found_through_the_links_on_the_capture() {
    let dir = h200_tree();
    relink(
        dir.path(),
        "usr/local/nvidia/lib64/libcuda.so.1",
        "libcuda.so.580.172.08",
    );
    let report = replay(dir.path());
    let mut expected = vec![
        ("nvml", None, Some(Skip)),
        ("driver_library_version", None, Some(Fail)),
        ("cpu_reference", None, Some(Skip)),
        ("cuda_smoke", Some(0), Some(Skip)),
    ];
    expected.extend(health_rows(0, Some(Skip)));
    assert_eq!(sorted(h200_changes(&report)), sorted(expected));
    assert_eq!(
        summary(&report, "driver_library_version", None),
        "kernel module 580.159.04, user-space 580.172.08 (/usr/lib/libcuda.so.1)"
    );
    assert_eq!(report.exit_code(), 1);
}
