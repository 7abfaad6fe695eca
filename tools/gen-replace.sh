#!/usr/bin/env bash
# Regenerate tools/go.mod's replace block from the pinned k8s.io/kubernetes release's own go.mod.
#
# k8s.io/kubernetes replaces each staging module (k8s.io/api, k8s.io/client-go, ...) with a
# directory under ./staging/src, which a module that requires k8s.io/kubernetes cannot use.
# Each of those modules is published on its own as v0.<minor>.<patch>; this script reads the
# list of staging modules out of the release's go.mod (never typed by hand) and points every
# one at its published version, so a version bump is: edit the require, run this, go mod tidy.
#
#   tools/gen-replace.sh            # uses the k8s.io/kubernetes version required in go.mod
#   tools/gen-replace.sh v1.36.5    # or a given one (also sets the require)
set -euo pipefail
cd "$(dirname "$0")"
k8s=${1:-$(go mod edit -json | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("Require") or []:
    if r["Path"] == "k8s.io/kubernetes":
        print(r["Version"])')}
[ -n "$k8s" ] || { echo "gen-replace: no k8s.io/kubernetes version (pass one: v1.36.5)" >&2; exit 2; }
staging=v0.${k8s#v1.}
modfile=$(go mod download -json "k8s.io/kubernetes@$k8s" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
mods=$(go mod edit -json "$modfile" | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("Replace") or []:
    if r["New"]["Path"].startswith("./staging/"):
        print(r["Old"]["Path"])')
[ -n "$mods" ] || { echo "gen-replace: no staging replaces found in $modfile" >&2; exit 1; }
# drop every old k8s.io replace, then add the generated ones
for old in $(go mod edit -json | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("Replace") or []:
    if r["Old"]["Path"].startswith("k8s.io/"):
        print(r["Old"]["Path"])'); do
  go mod edit -dropreplace="$old"
done
args=(-require="k8s.io/kubernetes@$k8s")
for m in $mods; do args+=(-replace="$m=$m@$staging"); done
go mod edit "${args[@]}"
echo "gen-replace: k8s.io/kubernetes $k8s, $(wc -w <<<"$mods") staging modules -> $staging" >&2
