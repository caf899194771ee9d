#!/usr/bin/env bash
# Installs what the native local stack (`tcpaudit stack up`, stack/*.ts) needs, on Debian 12:
#   - PostgreSQL 15 server binaries (apt), Java 17 and Maven (apt) when missing;
#   - Kafka broker jars and the Apicurio schema registry from Maven Central into .tcpaudit/
#     (git-ignored), at the versions pinned in stack/kafka/pom.xml and stack/registry/pom.xml.
# Idempotent: each step is skipped when its result is present and its pin is unchanged,
# so a second run takes well under a second. Needs root only when apt has something to install.
# TCPAUDIT_STACK_DIR moves .tcpaudit/ elsewhere, as it does for stack/paths.ts.
set -euo pipefail

ROOT="${TCPAUDIT_HOME:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
HOME_DIR="${TCPAUDIT_STACK_DIR:-$ROOT/.tcpaudit}"
PG_BIN=/usr/lib/postgresql/15/bin

log() { printf '{"level":"info","component":"setup-stack","msg":"%s"}\n' "$*" >&2; }
die() { printf '{"level":"error","component":"setup-stack","msg":"%s"}\n' "$*" >&2; exit 1; }

# Scratch dir of the fetch in progress; removed on any exit, failed or not.
tmp=""
trap '[ -z "$tmp" ] || rm -rf "$tmp"' EXIT

APT_UPDATED=0
apt_install() {
  [ "$(id -u)" -eq 0 ] || die "need root to apt-get install $*"
  if [ "$APT_UPDATED" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

install_postgres() {
  if [ -x "$PG_BIN/postgres" ] && [ -x "$PG_BIN/initdb" ]; then return; fi
  log "installing PostgreSQL 15 from apt"
  # The stack runs its own cluster under .tcpaudit/; stop Debian from creating and starting
  # the system "main" cluster on port 5432, which nothing here uses.
  apt_install postgresql-common
  mkdir -p /etc/postgresql-common
  if grep -q '^#\?\s*create_main_cluster' /etc/postgresql-common/createcluster.conf 2>/dev/null
  then
    sed -i 's/^#\?\s*create_main_cluster.*/create_main_cluster = false/' \
      /etc/postgresql-common/createcluster.conf
  else
    echo 'create_main_cluster = false' >> /etc/postgresql-common/createcluster.conf
  fi
  apt_install postgresql-15
  id postgres >/dev/null 2>&1 || die "apt installed PostgreSQL but no postgres OS user exists"
}

install_java() {
  local need=()
  command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null 2>&1 || need+=(maven)
  command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
  if [ "${#need[@]}" -gt 0 ]; then
    log "installing ${need[*]} from apt"
    apt_install "${need[@]}"
  fi
}

# Runs one maven-dependency-plugin goal of a pom into $dest, unless the stamp says this exact
# pom did it. Copies land in a temp dir first: an interrupted run never leaves a half-filled
# $dest. With unpack=yes each fetched .tar.gz is extracted into $dest instead.
fetch_pom() {
  local pom="$1" goal="$2" dest="$3" unpack="$4"
  local stamp="$dest/.pom.sha256" sum
  sum="$(sha256sum "$pom" | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; then
    log "$(basename "$dest") up to date ($dest)"
    return
  fi
  log "fetching $(basename "$(dirname "$pom")") artifacts from Maven Central"
  tmp="$(mktemp -d "$HOME_DIR/.fetch.XXXXXX")"
  # -q keeps Maven quiet, -B and style.color=never keep colour codes and progress out of logs;
  # its stdout goes to stderr so stdout stays free for callers.
  mvn -B -q --no-transfer-progress -Dstyle.color=never -f "$pom" "dependency:$goal" \
    -DincludeScope=runtime \
    -DoutputDirectory="$tmp/jars" >&2
  if [ "$unpack" = yes ]; then
    mkdir -p "$tmp/out"
    for archive in "$tmp"/jars/*.tar.gz; do tar -xzf "$archive" -C "$tmp/out"; done
  else
    mv "$tmp/jars" "$tmp/out"
  fi
  echo "$sum" > "$tmp/out/.pom.sha256"
  rm -rf "$dest"
  mkdir -p "$(dirname "$dest")"
  mv "$tmp/out" "$dest"
  rm -rf "$tmp"
  tmp=""
}

main() {
  install_postgres
  install_java
  mkdir -p "$HOME_DIR"
  # The postgres OS user must reach .tcpaudit/data/postgres; mkdir under a umask 077 would
  # block it, so the folders above the cluster are opened to traversal explicitly.
  chmod 755 "$HOME_DIR"
  fetch_pom "$ROOT/stack/kafka/pom.xml" copy-dependencies "$HOME_DIR/kafka/libs" no
  fetch_pom "$ROOT/stack/registry/pom.xml" copy "$HOME_DIR/registry/app" yes
  log "stack binaries ready under $HOME_DIR"
}

main "$@"
