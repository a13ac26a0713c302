"""Refresh the analytics.js the collector serves: @segment/analytics-next's standalone build.

    python tools/refresh_analytics_js.py [VERSION]      (what `make analytics-js` runs)

Downloads the package from the npm registry with `npm pack` (VERSION, default the newest),
copies into src/krenalis/collector/assets/analytics-next/ the minified standalone build, the
lazy-loaded chunks a page may ask for when the settings name only Segment.io (`CHUNKS`), and
the MIT licence, and rewrites the folder's README.md with the version, the files and their
SHA-256. Nothing else of the package is kept: the other chunks load only for destinations,
middleware or plans that the collector's settings never turn on.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "@segment/analytics-next"
ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "src" / "krenalis" / "collector" / "assets" / "analytics-next"
SCRIPT = "standalone.js"
LICENSE = "LICENSE.MD"
#: webpack chunk names loaded with Segment.io-only settings: "queryString" when the page URL has
#: ajs_ parameters, "auto-track" for trackLink / trackForm.
CHUNKS = ("queryString", "auto-track")


def main(argv: list[str]) -> int:
    version = argv[1] if len(argv) > 1 else _npm("view", PACKAGE, "version").strip()
    with tempfile.TemporaryDirectory() as scratch:
        package = _unpack(version, Path(scratch))
        built = package / "dist" / "umd"
        files = [built / SCRIPT, *(_chunk(built, name) for name in CHUNKS)]
        _replace(files + [package / LICENSE])
    _write_readme(version, [f.name for f in files])
    print(f"{PACKAGE}@{version} vendored in {TARGET.relative_to(ROOT)}")
    return 0


def _npm(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(["npm", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"npm {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def _unpack(version: str, scratch: Path) -> Path:
    _npm("pack", "--silent", f"{PACKAGE}@{version}", cwd=scratch)
    [tarball] = scratch.glob("*.tgz")
    with tarfile.open(tarball) as tar:
        tar.extractall(scratch, filter="data")
    return scratch / "package"


def _chunk(built: Path, name: str) -> Path:
    """The chunk file of webpack chunk `name`, checked to be the one the script asks for."""
    found = sorted(built.glob(f"{name}.bundle.*.js"))
    if len(found) != 1:
        raise SystemExit(f"expected one {name}.bundle.*.js in {built}, found {len(found)}")
    content_hash = found[0].name.removeprefix(f"{name}.bundle.").removesuffix(".js")
    if content_hash not in (built / SCRIPT).read_text():
        raise SystemExit(f"{SCRIPT} does not ask for {found[0].name}: the build changed")
    return found[0]


def _replace(files: list[Path]) -> None:
    TARGET.mkdir(parents=True, exist_ok=True)
    for old in TARGET.iterdir():
        if old.name != "README.md":
            old.unlink()
    for file in files:
        shutil.copyfile(file, TARGET / file.name)


def _write_readme(version: str, names: list[str]) -> None:
    rows = "\n".join(
        f"| `{name}` | {(TARGET / name).stat().st_size:,} | `{_sha256(TARGET / name)}` |"
        for name in names
    )
    text = README.format(package=PACKAGE, version=version, rows=rows, script=SCRIPT)
    (TARGET / "README.md").write_text(text)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


README = """\
# analytics.js, vendored

The collector serves these files (`krenalis/collector/web.py`) so that a website needs nothing
but the snippet `krenalis snippet` prints:

- `GET /analytics.js/v1/<write key>/analytics.min.js`: `{script}`, with the page's write key
  written in, as Segment's CDN does;
- `GET /analytics-next/bundles/<file>`: the lazy-loaded chunks below, under the path the script
  asks for them.

They come unmodified from the npm package `{package}`, version **{version}**
(`dist/umd/`), MIT licence in `LICENSE.MD`. Only the chunks a page may load while the settings
name Segment.io alone are kept (query-string `ajs_` parameters, `trackLink`/`trackForm`); the
others load destinations, middleware and tracking plans, which the collector's settings never
turn on.

| file | bytes | SHA-256 |
|---|---:|---|
{rows}

Refresh them with `make analytics-js` (the newest release) or
`make analytics-js ANALYTICS_JS_VERSION=x.y.z`: it runs `tools/refresh_analytics_js.py`, which
uses `npm pack` and rewrites this folder and this file. Run the browser tests
(`tests/browser/`) before committing the result.
"""


if __name__ == "__main__":
    sys.exit(main(sys.argv))
