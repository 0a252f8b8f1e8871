#!/usr/bin/env bash
# Install the Debian packages the tests and benchmarks use (nginx, wrk, redis-server), skipping
# what is already there. Safe to run again and again; does nothing when all are present.
set -euo pipefail

declare -A package_of=([nginx]=nginx-light [wrk]=wrk [redis-server]=redis-server)
missing=()
for command in "$@"; do
  if ! command -v "$command" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$command" ]; then
    missing+=("${package_of[$command]:-$command}")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "missing: ${missing[*]} (install them with your package manager)" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "installing ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts services on install; tiermux's tests start their own on free ports.
for service in nginx redis-server; do
  if command -v systemctl >/dev/null 2>&1; then $sudo systemctl disable --now "$service" >/dev/null 2>&1 || true; fi
  $sudo service "$service" stop >/dev/null 2>&1 || true
done
