#!/usr/bin/env bash
# Put the pinned plotly.js that fastp.html needs offline into build/vendor/ (and print its
# path): fastp's report loads plotly from the internet, so pipeline.sh copies this file next
# to each fastp.html and points the report at it (docs/pipeline.md).
#
# The basic bundle (scatter and bar: all of fastp's charts) from npm, by its client, checked
# against the pinned sha512, cached in ~/.cache/pipeq; never committed, shipped with its
# licence (the worker image copies build/vendor/). Idempotent and quick when present.
set -euo pipefail
cd "$(dirname "$0")/.."
version=2.35.3
integrity=sha512-ZipAmyME0S5qWec6GDy2dxP+E6Qhi0X6eNwH6gy7m5YMKYSgrDYrc+/3PTPWpJsxcIMF0kqoOruX+SgH2VwOWg==
out=build/vendor
if [ -f "$out/plotly.min.js" ] && [ "$(cat "$out/plotly.version" 2>/dev/null)" = "$version" ]; then
  echo "$PWD/$out/plotly.min.js"; exit 0
fi
cache=${PIPEQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pipeq}/plotly-$version
if [ ! -f "$cache/.complete" ]; then
  command -v npm >/dev/null || { echo "scripts/plotly.sh: npm is needed (Debian package npm)" >&2; exit 3; }
  mkdir -p "$cache"
  exec 9>"$cache.lock"; flock 9
  if [ ! -f "$cache/.complete" ]; then
    echo "pipeq: fetching plotly.js-basic-dist-min@$version (npm)" >&2
    tgz=$(cd "$cache" && npm pack --silent "plotly.js-basic-dist-min@$version")
    got="sha512-$(openssl dgst -sha512 -binary "$cache/$tgz" | base64 -w0)"
    [ "$got" = "$integrity" ] || { echo "scripts/plotly.sh: $tgz does not match the pinned sha512" >&2; rm -f "$cache/$tgz"; exit 1; }
    tar -xzf "$cache/$tgz" -C "$cache" package/plotly-basic.min.js package/LICENSE
    touch "$cache/.complete"
  fi
fi
mkdir -p "$out"
cp "$cache/package/plotly-basic.min.js" "$out/plotly.min.js.tmp"
cp "$cache/package/LICENSE" "$out/plotly.LICENSE"
echo "$version" >"$out/plotly.version"
mv "$out/plotly.min.js.tmp" "$out/plotly.min.js"
echo "$PWD/$out/plotly.min.js"
