#!/usr/bin/env python3
"""Fetch, verify and unpack the pinned wheels of provisioning/manifest.toml.

    python3 provisioning/fetch.py --role cpu  --dest .moebox        # development, CI
    python3 provisioning/fetch.py --role cuda --dest /usr/lib/moebox  # image build, GPU tests

Idempotent: a file already unpacked from a wheel with the pinned sha256 is left alone (a stamp
beside it records the wheel's digest). pip fetches with --require-hashes, and the digest is
checked again here before anything is unpacked. Uses only the standard library and pip.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent
MANIFEST = ROOT / "manifest.toml"


def sha256_of(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(wheel: dict, python: dict, cache: pathlib.Path) -> pathlib.Path:
    target = cache / wheel["file"]
    if target.is_file() and sha256_of(target) == wheel["sha256"]:
        return target
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as req:
        req.write(f'{wheel["name"]}=={wheel["version"]} --hash=sha256:{wheel["sha256"]}\n')
        requirements = req.name
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
        "--require-hashes", "--python-version", python["version"],
        "--implementation", python["implementation"], "--dest", str(cache), "-r", requirements,
    ]
    for platform in python["platforms"]:
        command += ["--platform", platform]
    try:
        subprocess.run(command, check=True)
    except subprocess.CalledProcessError as e:
        sys.exit(f"fetch: pip could not download {wheel['name']}=={wheel['version']} (exit {e.returncode})")
    finally:
        os.unlink(requirements)
    if not target.is_file():
        sys.exit(f"fetch: pip did not produce {target}; is the manifest's file name right?")
    found = sha256_of(target)
    if found != wheel["sha256"]:
        target.unlink()
        sys.exit(f"fetch: {target.name} has sha256 {found}, the manifest pins {wheel['sha256']}")
    return target


def members(wheel: dict, archive: zipfile.ZipFile) -> list[tuple[str, str]]:
    """(member in the wheel, destination relative to --dest) pairs."""
    pairs = list(wheel.get("extract", {}).items())
    for prefix, dest_dir in wheel.get("extract_dir", {}).items():
        for name in archive.namelist():
            if name.startswith(prefix) and not name.endswith("/") and ".so" in name:
                pairs.append((name, dest_dir + name[len(prefix):]))
    return pairs


def unpack(wheel: dict, path: pathlib.Path, dest: pathlib.Path) -> int:
    unpacked = 0
    with zipfile.ZipFile(path) as archive:
        for member, relative in members(wheel, archive):
            out = dest / relative
            stamp = out.with_name(out.name + ".sha256")
            if out.is_file() and stamp.is_file() and stamp.read_text().strip() == wheel["sha256"]:
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            partial = out.with_name(out.name + ".partial")
            with archive.open(member) as src, partial.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.chmod(0o755)
            partial.replace(out)
            stamp.write_text(wheel["sha256"] + "\n")
            unpacked += 1
    return unpacked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=["cpu", "cuda"], required=True)
    parser.add_argument("--dest", type=pathlib.Path, required=True, help="folder to unpack libraries into")
    parser.add_argument("--cache", type=pathlib.Path, help="folder for downloaded wheels (default: DEST/wheels)")
    parser.add_argument("--manifest", type=pathlib.Path, default=MANIFEST)
    args = parser.parse_args()

    manifest = tomllib.loads(args.manifest.read_text())
    wheels = [w for w in manifest["wheel"] if w["role"] == args.role]
    cache = args.cache or args.dest / "wheels"
    cache.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        path = download(wheel, manifest["python"], cache)
        count = unpack(wheel, path, args.dest)
        state = f"unpacked {count} file(s)" if count else "up to date"
        print(f"fetch: {wheel['name']}=={wheel['version']} sha256 ok, {state}")


if __name__ == "__main__":
    main()
