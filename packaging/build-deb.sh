#!/usr/bin/env bash
# Builds the Debian packages sdd and sdd-client (`make deb`).
#
# The build happens in a copy of the tree (the files git knows about, committed or not, minus ignored
# ones) with packaging/debian as ./debian, so the repository itself stays clean. The .debs, the
# .buildinfo/.changes and the lintian report end up in ./debian-build/ (gitignored).
#
#   packaging/build-deb.sh [--no-lintian] [OUTDIR]
#
# pybuild must see Debian's python3, not a pyenv/venv one first on PATH: the build runs with a plain
# system PATH.
set -euo pipefail

lintian=1
if [ "${1:-}" = "--no-lintian" ]; then lintian=0; shift; fi
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="$(mkdir -p "${1:-$repo/debian-build}" && cd "${1:-$repo/debian-build}" && pwd)"
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset PYTHONPATH VIRTUAL_ENV PYTHONHOME

for tool in dpkg-buildpackage dh pybuild; do
    command -v "$tool" >/dev/null || {
        echo "build-deb: $tool is missing: apt-get install debhelper dh-python python3-all pybuild-plugin-pyproject" >&2
        exit 1
    }
done

work="$(mktemp -d "${TMPDIR:-/tmp}/sdd-deb.XXXXXX")"
trap 'rm -rf "$work"' EXIT
src="$work/sdd-0.1.0"
mkdir -p "$src"
cd "$repo"
# Files git tracks or would track (not ignored), as they are in the working tree now.
git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
    | tar --null -T - -cf - | tar -xf - -C "$src"
rm -rf "$src/debian"
cp -r "$repo/packaging/debian" "$src/debian"
# pyproject.toml says `license = "SPDX"` (PEP 639, setuptools >= 77, so a pip install prints no deprecation
# warning); Debian 12's setuptools (66) reads only the older table form. The build copy gets that form.
/usr/bin/python3 - "$src" <<'PY'
import pathlib, re, sys
import setuptools
if int(setuptools.__version__.split(".")[0]) < 77:
    for name in ("pyproject.toml", "client/pyproject.toml"):
        path = pathlib.Path(sys.argv[1], name)
        text = re.sub(r'^license = "([^"]+)"$', r'license = {text = "\1"}', path.read_text(), flags=re.M)
        path.write_text(text.replace('requires = ["setuptools>=77"]', 'requires = ["setuptools>=66", "wheel"]'))
PY

cd "$src"
# No -dbgsym package for the one C program (the ClamAV hook): nothing to ship, and the .changes then lists
# only the two packages this script hands over.
export DEB_BUILD_OPTIONS="${DEB_BUILD_OPTIONS:+$DEB_BUILD_OPTIONS }noddebs"
dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1 || {
    tail -n 60 "$work/build.log" >&2
    echo "build-deb: dpkg-buildpackage failed (log above)" >&2
    exit 1
}
rm -f "$out"/sdd_*.deb "$out"/sdd-client_*.deb "$out"/sdd_*.changes "$out"/sdd_*.buildinfo
cp "$work"/sdd_*.deb "$work"/sdd-client_*.deb "$work"/sdd_*.changes "$work"/sdd_*.buildinfo "$out"/
cp "$work/build.log" "$out/build.log"

if [ "$lintian" = 1 ]; then
    if command -v lintian >/dev/null; then
        # Errors fail the build; warnings are reported in lintian.txt.
        lintian --fail-on error --tag-display-limit 0 "$out"/sdd_*.changes >"$out/lintian.txt" 2>&1 || {
            cat "$out/lintian.txt" >&2
            echo "build-deb: lintian reports errors" >&2
            exit 1
        }
    else
        echo "build-deb: lintian is not installed, not checked" >&2
    fi
fi
ls -1 "$out"/*.deb
