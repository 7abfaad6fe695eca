#!/usr/bin/env bash
# Keycloak for the tests: installed from Maven Central and built once, cached.
#
#   scripts/keycloak.sh            print the home of a built Keycloak (building it first if needed)
#   scripts/keycloak.sh run ARGS   run its kc.sh with ARGS on the Temurin 25 JDK (exec: the caller's
#                                  process is Keycloak's, for the test fixture to stop)
#
# The distribution is org.keycloak:keycloak-quarkus-dist:$VERSION:zip (mvn dependency:get puts it
# in ~/.m2); `kc.sh build --db=dev-file --health-enabled=true` (about 34 s on an idle machine)
# runs once into ~/.cache/pipeq/keycloak-$VERSION-<hash of the realm>, which also holds the
# test realm (tests/keycloak/realm.json) in data/import for `start --import-realm`. Each start
# keeps its database in a folder of its own (--db-url), so the cached home is never written
# by a test. Concurrent callers wait on a lock; `.complete` marks a finished build.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${PIPEQ_KEYCLOAK_VERSION:-26.5.6}
REALM=tests/keycloak/realm.json

java_home() {
  local d
  for d in ${JAVA_HOME:-} /usr/lib/jvm/temurin-25-jdk-amd64 /usr/lib/jvm/temurin-25* /opt/*jdk*25* /opt/temurin-25*; do
    if [ -x "$d/bin/java" ] && "$d/bin/java" -version 2>&1 | grep -q 'version "25'; then echo "$d"; return; fi
  done
  echo "pipeq: no Java 25 JDK found (looked in JAVA_HOME, /usr/lib/jvm, /opt); Keycloak $VERSION needs one" >&2
  exit 1
}

key=$( { echo "$VERSION"; cat "$REALM"; } | sha256sum | cut -c1-12)
cache=${PIPEQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pipeq}
home="$cache/keycloak-$VERSION-$key"

if [ ! -f "$home/.complete" ]; then
  mkdir -p "$cache"
  exec 9>"$cache/keycloak.lock"
  flock 9
  if [ ! -f "$home/.complete" ]; then
    export JAVA_HOME; JAVA_HOME=$(java_home)
    zip="${MAVEN_REPO:-$HOME/.m2/repository}/org/keycloak/keycloak-quarkus-dist/$VERSION/keycloak-quarkus-dist-$VERSION.zip"
    if [ ! -f "$zip" ]; then
      echo "pipeq: downloading Keycloak $VERSION from Maven Central (~200 MB, once)" >&2
      mvn -q dependency:get -Dartifact="org.keycloak:keycloak-quarkus-dist:$VERSION:zip" >&2
    fi
    echo "pipeq: building Keycloak $VERSION into $home (kc.sh build, ~34 s, once)" >&2
    work=$(mktemp -d "$cache/keycloak-build.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    unzip -q "$zip" -d "$work"
    built="$work/keycloak-$VERSION"
    "$built/bin/kc.sh" build --db=dev-file --health-enabled=true >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }
    mkdir -p "$built/data/import"
    cp "$REALM" "$built/data/import/pipeq-realm.json"
    echo "$JAVA_HOME" >"$built/.java_home"
    rm -rf "$home"
    mv "$built" "$home"
    touch "$home/.complete"
  fi
fi

if [ "${1:-}" = run ]; then
  shift
  export JAVA_HOME; JAVA_HOME=$(cat "$home/.java_home")
  exec "$home/bin/kc.sh" "$@"
fi
echo "$home"
