#!/usr/bin/env bash
# Print the bin directory of one extra test tool module under tools/<name>/, building its
# `tool` directives first if they are missing.
#
# Test tooling only, never shipped. Each tool that cannot share tools/go.mod (the
# Kubernetes module, whose replace block pins every k8s.io staging module) gets its own
# module tools/<name>/go.mod listing its mains as `tool` directives; this script builds
# them all with `go install tool` into the cache, outside the checkout, keyed by the name
# and a hash of go.mod (as `go mod edit -json` reads it), go.sum and BUILD_REV (tools/cache.sh,
# shared with tools/build.sh), so a fresh clone on the same machine (CI) reuses them at once.
#
#   tools/gobuild.sh NAME            # ensure built, print the bin directory
#   tools/gobuild.sh NAME --check    # print it; exit 0 if built, 1 if not (never builds)
#
# Environment: PIPEQ_CACHE (default ${XDG_CACHE_HOME:-~/.cache}/pipeq), and Go's own.
set -euo pipefail
name=${1:?usage: tools/gobuild.sh NAME [--check]}
cd "$(dirname "$0")/$name"
command -v go >/dev/null || PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { echo "tools/gobuild.sh: no go on PATH (Go >= 1.26 is needed)" >&2; exit 1; }
# Bump when the recipe changes in a way go.mod/go.sum don't show.
BUILD_REV=1
. ../cache.sh
hash=$(module_hash "$BUILD_REV" 10)
cache=$(cache_root)

build() { # TMP: fill TMP/bin
  export CGO_ENABLED=${CGO_ENABLED:-0}
  export GOFLAGS="-trimpath -buildvcs=false -mod=readonly"
  # -dwarf=false: the compiler skips the debug info that -w drops at link anyway (14% less
  # CPU for a cold CoreDNS here, tools/README.md). The program is the same, so BUILD_REV and
  # the warm entries stay.
  GOBIN="$1/bin" go install -gcflags=all=-dwarf=false -ldflags="-s -w ${PIPEQ_GO_LDFLAGS:-}" tool
}
cached_bin "$cache/tool-$name-$hash" "$cache/tool-$name.lock" "${2:-}" "test tool module tools/$name" build
