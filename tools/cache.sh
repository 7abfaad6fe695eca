# Sourced by tools/build.sh and tools/gobuild.sh: how a built test tool is kept outside the
# checkout, so a fresh clone on the same machine (CI) reuses it at once.
#
# An entry is a directory named for its inputs (module_hash). It is built in DIR.tmp, renamed
# to DIR, then marked DIR/.complete: only a finished build has the marker, so an interrupted
# one is built again. One build per lock file at a time; a caller that waited on the lock
# finds the entry built.
#
#   cache=$(cache_root)
#   hash=$(module_hash "$BUILD_REV" 10)      # in the module's directory
#   cached_bin "$cache/NAME-$hash" "$cache/NAME.lock" "${mode:-}" "what it is" build_fn

# Where entries live: $PIPEQ_CACHE, default ${XDG_CACHE_HOME:-~/.cache}/pipeq.
cache_root() {
  echo "${PIPEQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pipeq}"
}

# Print the first LEN hex digits of a hash of REV (bumped when a recipe changes in a way the
# module does not show), the module of the current directory as `go mod edit -json` reads it
# (its meaning, not its comments or layout), its go.sum (absent in a module without
# dependencies) and its own .go files (a main of ours: tools/coredns, tools/pause; the other
# modules have none, so nothing is added for them). The text hashed is exactly what build.sh
# (LEN 8) and gobuild.sh (LEN 10) hashed before this file existed, plus those .go files:
# change it and every warm entry is a miss.
module_hash() { # REV LEN
  { echo "$1"; go mod edit -json; cat go.sum 2>/dev/null || true
    find . -maxdepth 1 -name '*.go' | LC_ALL=C sort | xargs -r cat; } | sha256sum | cut -c1-"$2"
}

# Print DIR/bin, after building it with BUILD_FN unless DIR/.complete is there. With MODE
# --check, never build: return 1 when it is not built. BUILD_FN gets the directory to fill
# (with an empty bin/ in it) as $1; its output goes to stderr, so stdout is the path alone.
# WHAT names the build in the messages. BUILDINFO in the entry gets Go's version and the
# seconds taken, after whatever BUILD_FN wrote there.
cached_bin() { # DIR LOCK MODE WHAT BUILD_FN
  local dir=$1 lock=$2 mode=$3 what=$4 build=$5 start
  if [ -f "$dir/.complete" ]; then echo "$dir/bin"; return 0; fi
  if [ "$mode" = --check ]; then echo "$dir/bin"; return 1; fi
  mkdir -p "$(dirname "$lock")"
  exec 9>"$lock"
  flock 9
  if [ -f "$dir/.complete" ]; then echo "$dir/bin"; return 0; fi
  echo "pipeq: building $what into $dir (once)" >&2
  start=$(date +%s)
  rm -rf "$dir" "$dir.tmp"
  mkdir -p "$dir.tmp/bin"
  "$build" "$dir.tmp" >&2
  echo "go=$(go env GOVERSION) seconds=$(( $(date +%s) - start ))" >> "$dir.tmp/BUILDINFO"
  mv "$dir.tmp" "$dir"
  touch "$dir/.complete"
  echo "pipeq: built $what in $(( $(date +%s) - start ))s: $dir/bin" >&2
  echo "$dir/bin"
}
