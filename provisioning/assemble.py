#!/usr/bin/env python3
"""Assemble the pinned artefacts of provisioning/manifest.toml into an image tree, with checksums.

    python3 provisioning/assemble.py tree --dest ROOT [--role cuda|cpu] [--cache DIR] [--model DIR]
    python3 provisioning/assemble.py packages        # the driver's `name=version` apt specs

`tree` fills ROOT (the image's root, or any staging folder):

    ROOT/usr/lib/moebox/...                   ONNX Runtime and CUDA libraries (fetch.py, by role)
    ROOT/usr/share/moebox/smoke-model/        each [[model]] of the manifest, every file verified
    ROOT/usr/share/moebox/model/              --model DIR, the served model, if given
    ROOT/etc/modprobe.d/moebox-nvidia.conf    nouveau blacklist, nvidia options
    ROOT/usr/lib/udev/rules.d/70-moebox-nvidia.rules
    ROOT/usr/lib/moebox/SHA256SUMS            sha256 of every file above under usr/, in
                                              `sha256sum` format, relative to its folder, so
                                              `moebox provision` (and `sha256sum -c`) verify it
                                              at every boot

Idempotent: fetch.py leaves verified files alone, models are copied only when they differ,
SHA256SUMS is rewritten atomically. Uses only the standard library (and pip through fetch.py).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tomllib

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
MANIFEST = HERE / "manifest.toml"


def sha256_of(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def version_key(version: str) -> list[int]:
    return [int(part) if part.isdigit() else 0 for part in version.split("-")[0].split(".")]


def check_driver(manifest: dict) -> None:
    """The driver the image installs must satisfy the CUDA runtime it ships."""
    driver = manifest["driver"]["version"]
    minimum = manifest["triple"]["nvidia_driver_min"]
    if version_key(driver) < version_key(minimum):
        sys.exit(f"assemble: [driver] version {driver} is older than [triple] nvidia_driver_min {minimum}")
    for deb in manifest.get("deb", []):
        if not deb["version"].startswith(driver + "-"):
            sys.exit(f"assemble: {deb['name']} {deb['version']} is not driver {driver}: kernel module and libraries must be one version")


def copy_if_changed(src: pathlib.Path, dst: pathlib.Path) -> bool:
    if dst.is_file() and dst.stat().st_size == src.stat().st_size and sha256_of(dst) == sha256_of(src):
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(dst.name + ".partial")
    shutil.copyfile(src, partial)
    partial.chmod(0o644)
    partial.replace(dst)
    return True


def install_model(model: dict, root: pathlib.Path) -> None:
    source = REPO / model["source"]
    dest = root / model["dest"]
    pinned = model["files"]
    present = sorted(p.name for p in source.iterdir() if p.is_file())
    if present != sorted(pinned):
        sys.exit(f"assemble: {source} holds {present}, the manifest pins {sorted(pinned)}")
    for name, digest in sorted(pinned.items()):
        found = sha256_of(source / name)
        if found != digest:
            sys.exit(f"assemble: {source / name} has sha256 {found}, the manifest pins {digest}")
        copy_if_changed(source / name, dest / name)
    print(f"assemble: model {model['name']} -> {model['dest']} ({len(pinned)} files, sha256 ok)")


def install_served_model(source: pathlib.Path, root: pathlib.Path) -> None:
    dest = root / "usr/share/moebox/model"
    files = sorted(p for p in source.rglob("*") if p.is_file())
    if not (source / "genai_config.json").is_file():
        sys.exit(f"assemble: --model {source} is not an onnxruntime-genai folder (no genai_config.json)")
    for path in files:
        copy_if_changed(path, dest / path.relative_to(source))
    print(f"assemble: served model {source} -> usr/share/moebox/model ({len(files)} files)")


def write_sums(root: pathlib.Path, sums: pathlib.Path) -> int:
    """Every file under usr/lib/moebox and usr/share/moebox, relative to the list's folder."""
    lines = []
    for top in ("usr/lib/moebox", "usr/share/moebox"):
        base = root / top
        if not base.is_dir():
            continue
        for path in sorted(p for p in base.rglob("*") if p.is_file() or p.is_symlink()):
            if path == sums or path.name.endswith((".sha256", ".partial")) or "wheels" in path.relative_to(root).parts:
                continue
            relative = os.path.relpath(path, sums.parent)
            lines.append(f"{sha256_of(path)}  {relative}\n")
    partial = sums.with_name(sums.name + ".partial")
    sums.parent.mkdir(parents=True, exist_ok=True)
    partial.write_text("# moebox artefacts: written by provisioning/assemble.py, verified by `moebox provision`\n" + "".join(lines))
    partial.replace(sums)
    return len(lines)


def tree(args: argparse.Namespace, manifest: dict) -> None:
    root: pathlib.Path = args.dest.resolve()
    image = manifest["image"]
    check_driver(manifest)
    libraries = root / image["libraries"]
    command = [sys.executable, str(HERE / "fetch.py"), "--role", args.role, "--dest", str(libraries),
               "--manifest", str(args.manifest)]
    # Wheels are downloads, not artefacts: keep them out of the image tree.
    command += ["--cache", str(args.cache or root.parent / (root.name + "-wheels"))]
    subprocess.run(command, check=True)
    for model in manifest.get("model", []):
        install_model(model, root)
    if args.model:
        install_served_model(args.model.resolve(), root)
    copy_if_changed(HERE / "modprobe.d/moebox-nvidia.conf", root / image["modprobe_d"] / "moebox-nvidia.conf")
    copy_if_changed(HERE / "udev/70-moebox-nvidia.rules", root / image["udev_rules"] / "70-moebox-nvidia.rules")
    count = write_sums(root, root / image["sums"])
    print(f"assemble: {image['sums']}: {count} files")


def packages(manifest: dict) -> None:
    check_driver(manifest)
    for deb in manifest.get("deb", []):
        print(f"{deb['name']}={deb['version']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=pathlib.Path, default=MANIFEST)
    verbs = parser.add_subparsers(dest="verb", required=True)
    build = verbs.add_parser("tree", help="fill an image tree with the pinned artefacts and SHA256SUMS")
    build.add_argument("--dest", type=pathlib.Path, required=True, help="the image's root (or a staging folder)")
    build.add_argument("--role", choices=["cpu", "cuda"], default="cuda")
    build.add_argument("--cache", type=pathlib.Path, help="folder for downloaded wheels (default: DEST-wheels beside DEST)")
    build.add_argument("--model", type=pathlib.Path, help="the served model folder, installed as usr/share/moebox/model")
    verbs.add_parser("packages", help="print the driver packages as apt `name=version` specs")
    args = parser.parse_args()
    manifest = tomllib.loads(args.manifest.read_text())
    if args.verb == "tree":
        tree(args, manifest)
    else:
        packages(manifest)


if __name__ == "__main__":
    main()
