#!/usr/bin/env bash
# Static checks that fail CI (tools/test.sh runs this before pytest):
#   mypy         types; strict for core/, --check-untyped-defs elsewhere ([tool.mypy])
#   lint-imports the layer contracts ([tool.importlinter]): core knows nothing
#                of proxy/operator/kopf/kubernetes; proxy and operator never meet
# Both read pyproject.toml. They check the installed names (orchestrator.core, ...):
# the top-level folders are mapped into that namespace by
# [tool.setuptools.package-dir], which neither tool can follow through the
# editable install's import hook, so this builds the same layout as a tree of
# symlinks under build/check/ (gitignored) and points them at it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
tree=build/check/src
python - "$tree" <<'PY'
import shutil, sys, tomllib
from pathlib import Path

tree = Path(sys.argv[1])
shutil.rmtree(tree, ignore_errors=True)
mapping = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
for package, folder in mapping.items():
    dest = tree.joinpath(*package.split("."))
    dest.mkdir(parents=True, exist_ok=True)
    for source in Path(folder).glob("*.py"):
        dest.joinpath(source.name).symlink_to(source.resolve())
tree.joinpath("testbed").symlink_to(Path("testbed").resolve())  # for the contract that keeps it out
PY
# mypy names files relative to the tree (orchestrator/core/x.py): print them
# as the repository's own paths (core/x.py) so they can be clicked.
paths=$(python -c 'import tomllib; m = tomllib.load(open("pyproject.toml", "rb"))["tool"]["setuptools"]["package-dir"]
for p, f in sorted(m.items(), key=lambda i: -len(i[0])): print(p.replace(".", "/") + "/", f + "/")')
sed_args=()
while read -r pkg folder; do sed_args+=(-e "s#^${pkg}#${folder}#"); done <<<"$paths"
rc=0
(cd "$tree" && python -m mypy --config-file "$root/pyproject.toml" --cache-dir "$root/build/check/mypy-cache" \
  -p orchestrator) | sed "${sed_args[@]}" || rc=1
# (through python: the environment's scripts folder need not be on PATH)
PYTHONPATH="$root/$tree" python -c 'import sys; from importlinter.cli import lint_imports_command as main; sys.exit(main())' \
  --no-logo --no-cache "$root/pyproject.toml" || rc=1
exit $rc
