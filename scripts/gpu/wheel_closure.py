"""Download wheels for the GPU machine: the given requirements plus every dependency the machine lacks.

    python scripts/gpu/wheel_closure.py --dest DIR [--have scripts/gpu/device_packages.txt]
        [--python 3.12] [--exclude NAME ...] [--check-pin torch==2.11.0] REQUIREMENT ...

The GPU machine has no network and its own Python (3.12) with torch and ~200 packages already
installed (device_packages.txt). Starting from REQUIREMENTs, each package is fetched with
`pip download --no-deps --only-binary=:all:` for CPython 3.12 on manylinux x86_64, its
Requires-Dist read from the wheel's METADATA (markers evaluated for that target, extras followed),
and every requirement that names neither a package of the machine nor one already fetched is
fetched in turn, until nothing is missing. This is a closure, not a resolver: a requirement on a
package the machine has is assumed satisfied (its version is printed when known so a conflict can
be seen), and each missing package is fetched once, at the newest version its first requirement
allows.

--check-pin NAME==VERSION: every fetched wheel that pins NAME must pin exactly VERSION (vLLM pins
torch exactly; a vLLM built for another torch cannot run on the machine's torch). The run stops
with the offending wheel named.

Prints a table (name, version, MiB, why it was needed) and writes DIR/closure.json.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

PLATFORMS = ["manylinux_2_39_x86_64", "manylinux_2_35_x86_64", "manylinux_2_34_x86_64", "manylinux_2_31_x86_64",
             "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "linux_x86_64", "any"]


def target_environment(python: str) -> dict:
    env = default_environment()
    env.update(python_version=python, python_full_version=f"{python}.3", platform_system="Linux",
               sys_platform="linux", platform_machine="x86_64", os_name="posix", implementation_name="cpython",
               platform_python_implementation="CPython")
    return env


def read_have(path: Path) -> dict[str, str | None]:
    have = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            have[canonicalize_name(name)] = version or None
    return have


def pip_download(requirement: str, dest: Path, python: str) -> Path:
    before = set(dest.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", python, "--implementation", "cp", "--abi", f"cp{python.replace('.', '')}",
           "--abi", "abi3", "--abi", "none", "-d", str(dest)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + [requirement], check=True)
    new = set(dest.glob("*.whl")) - before
    name = canonicalize_name(Requirement(requirement).name)
    matches = [p for p in (new or dest.glob("*.whl")) if canonicalize_name(parse_wheel_filename(p.name)[0]) == name]
    if not matches:
        raise SystemExit(f"pip fetched no wheel for {requirement!r} (only an sdist? then build it on the machine)")
    return max(matches, key=lambda p: p.stat().st_mtime)


def requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if re.match(r"[^/]+\.dist-info/METADATA$", n))
        text = z.read(meta).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dest", required=True)
    p.add_argument("--have", default=str(Path(__file__).with_name("device_packages.txt")))
    p.add_argument("--python", default="3.12")
    p.add_argument("--exclude", nargs="*", default=[], help="never fetch these (say why in the caller)")
    p.add_argument("--check-pin", action="append", default=[], metavar="NAME==VERSION")
    p.add_argument("requirements", nargs="+")
    args = p.parse_args(argv)
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    have = read_have(Path(args.have))
    excluded = {canonicalize_name(n) for n in args.exclude}
    pins = {canonicalize_name(Requirement(c).name): str(Requirement(c).specifier) for c in args.check_pin}
    env = target_environment(args.python)
    queue = [(r, "requested") for r in args.requirements]
    fetched: dict[str, dict] = {}
    on_machine: dict[str, list[str]] = {}
    while queue:
        text, why = queue.pop(0)
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name in have:
            on_machine.setdefault(name, []).append(f"{text} (for {why})")
            continue
        if name in excluded or name in fetched:
            continue
        plain = f"{req.name}{req.specifier}"
        wheel = pip_download(plain, dest, args.python)
        version = str(parse_wheel_filename(wheel.name)[1])
        fetched[name] = dict(file=wheel.name, version=version, bytes=wheel.stat().st_size, why=why)
        for dep in requires(wheel):
            dep_req = Requirement(dep)
            extras = req.extras or {""}
            if dep_req.marker is not None and not any(
                dep_req.marker.evaluate({**env, "extra": extra}) for extra in extras
            ):
                continue
            dep_name = canonicalize_name(dep_req.name)
            if dep_name in pins and str(dep_req.specifier) != pins[dep_name]:
                raise SystemExit(
                    f"{wheel.name} requires {dep_req.name}{dep_req.specifier}, but the GPU machine has "
                    f"{dep_req.name}{pins[dep_name]}: choose a release built for that (see docs/gpu.md)"
                )
            dep_text = f"{dep_req.name}{'[' + ','.join(sorted(dep_req.extras)) + ']' if dep_req.extras else ''}"
            queue.append((dep_text + str(dep_req.specifier), f"{req.name}"))
    total = sum(f["bytes"] for f in fetched.values())
    print(f"{'fetched':<40}{'version':>16}{'MiB':>9}  needed by")
    for name, f in sorted(fetched.items(), key=lambda kv: -kv[1]["bytes"]):
        print(f"{name:<40}{f['version']:>16}{f['bytes'] / 2**20:>9.1f}  {f['why']}")
    print(f"{len(fetched)} wheels, {total / 2**20:.0f} MiB")
    print("assumed present on the machine (versions checked where known):")
    conflicts = []
    for name, uses in sorted(on_machine.items()):
        known = have[name]
        bad = [u for u in uses if known and not Requirement(u.split(" (for ")[0]).specifier.contains(known, prereleases=True)]
        conflicts += [f"{name}=={known} does not satisfy {u}" for u in bad]
        print(f"  {name}{'==' + known if known else ''}{'  CONFLICT' if bad else ''}: {'; '.join(sorted(set(uses)))[:160]}")
    for conflict in conflicts:
        print(f"CONFLICT: {conflict}")
    (dest / "closure.json").write_text(json.dumps(dict(fetched=fetched, on_machine=on_machine, conflicts=conflicts),
                                                  indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
