#!/usr/bin/env bash
# Validates the deployment files without starting anything.
#
#   deploy/validate.sh [PATH_TO_LOGWARDEN_BINARY]
#
# Checks, in order:
#   1. docker-compose.yml with every compose CLI present (docker-compose v1,
#      `docker compose` v2); fails if there is none. Needs no Docker engine.
#   2. YAML syntax of the other config files (if python3 with PyYAML is here).
#   3. loki-config.yml: Loki 3 shape (tsdb + v13) and none of the 2.x keys that
#      Loki 3 rejects at start-up or deprecates.
#   4. deploy/logwarden.example.yml with `logwarden check-config`, when a
#      binary is given as $1.
#   5. deploy/logwarden.service with `systemd-analyze verify`, when present.
# Anything not checked is reported as SKIPPED on stderr.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

binary="${1:-}"
skipped=0

step() { printf '\n==> %s\n' "$*"; }
ok() { printf '    ok: %s\n' "$*"; }
fail() { printf '    FAILED: %s\n' "$*" >&2; exit 1; }
skip() {
  skipped=$((skipped + 1))
  printf '\n!!! SKIPPED: %s\n' "$*" >&2
}

# --- 1. compose ---------------------------------------------------------------
step "docker-compose.yml: compose config"
ran=0
if command -v docker-compose >/dev/null 2>&1; then
  echo "    $(docker-compose version --short 2>/dev/null || echo 'docker-compose (v1)'): docker-compose -f docker-compose.yml config -q"
  docker-compose -f docker-compose.yml config -q
  # Also with the optional profile, so the alloy service is checked too.
  docker-compose -f docker-compose.yml --profile alloy config -q
  ok "docker-compose v1 accepts it"
  ran=$((ran + 1))
fi
if docker compose version >/dev/null 2>&1; then
  echo "    $(docker compose version --short 2>/dev/null): docker compose -f docker-compose.yml config -q"
  docker compose -f docker-compose.yml config -q
  docker compose -f docker-compose.yml --profile alloy config -q
  ok "docker compose v2 accepts it"
  ran=$((ran + 1))
fi
if [ "$ran" -eq 0 ]; then
  fail "no compose CLI found (install Debian's docker-compose package, or the docker compose plugin)"
fi

# --- 2. YAML syntax -------------------------------------------------------------
yaml_files=(
  loki-config.yml
  promtail-config.yml
  deploy/logwarden.example.yml
  deploy/logwarden.compose.yml
  deploy/grafana/provisioning/datasources/loki.yml
  deploy/grafana/provisioning/datasources/prometheus.yml
  deploy/grafana/provisioning/dashboards/logwarden.yml
  deploy/prometheus.yml
)
step "YAML syntax: ${yaml_files[*]}"
if command -v python3 >/dev/null 2>&1 && python3 -c 'import yaml' >/dev/null 2>&1; then
  for f in "${yaml_files[@]}"; do
    python3 - "$f" <<'PY' || fail "$f is not valid YAML"
import sys, yaml
with open(sys.argv[1]) as fh:
    doc = yaml.safe_load(fh)
if not isinstance(doc, dict):
    sys.exit(f"{sys.argv[1]}: top level is not a mapping")
PY
    ok "$f"
  done
else
  skip "YAML syntax check (python3 with PyYAML not found; Debian: apt-get install python3-yaml)"
fi

step "deploy/prometheus.yml and the Grafana dashboard"
if command -v promtool >/dev/null 2>&1; then
  promtool check config deploy/prometheus.yml >/dev/null || fail "promtool rejects deploy/prometheus.yml"
  ok "promtool check config deploy/prometheus.yml"
else
  skip "promtool not found (Debian: apt-get install prometheus)"
fi
python3 -c 'import json,sys; json.load(open(sys.argv[1]))' deploy/grafana/dashboards/logwarden.json \
  || fail "deploy/grafana/dashboards/logwarden.json is not valid JSON"
ok "deploy/grafana/dashboards/logwarden.json is JSON"

# --- 3. Loki 3 shape -----------------------------------------------------------
step "loki-config.yml: Loki 3 schema, no keys that Loki 3 removed or deprecated"
# Comments are stripped first: the file names the removed keys in its header.
loki_keys="$(sed -e 's/#.*//' loki-config.yml)"
for required in 'store: tsdb' 'schema: v13' 'object_store: filesystem' 'period: 24h'; do
  grep -q "$required" <<<"$loki_keys" || fail "loki-config.yml lacks '$required'"
done
for removed in shared_store enforce_metric_name max_look_back_period max_transfer_retries \
  table_manager boltdb-shipper boltdb_shipper 'schema: v11' 'schema: v12'; do
  if grep -q -- "$removed" <<<"$loki_keys"; then
    fail "loki-config.yml uses '$removed': removed or deprecated in Loki 3 (see the file's header)"
  fi
done
ok "tsdb + v13 + filesystem, no removed keys"

# --- 4. logwarden check-config -----------------------------------------------------
step "deploy/logwarden.{example,compose}.yml: logwarden check-config"
if [ -n "$binary" ]; then
  [ -x "$binary" ] || fail "$binary is not an executable file"
  for cfg in deploy/logwarden.example.yml deploy/logwarden.compose.yml; do
    "$binary" check-config "$cfg" || fail "logwarden check-config rejected $cfg"
    ok "$cfg accepted by $binary"
  done
else
  skip "logwarden check-config (no binary given: run deploy/validate.sh target/release/logwarden)"
fi

# --- 5. systemd unit -----------------------------------------------------------
step "deploy/logwarden.service: systemd-analyze verify"
if command -v systemd-analyze >/dev/null 2>&1; then
  # verify insists that ExecStart's program exists. Check a copy whose path
  # points at the given binary (or /bin/true when there is none); nothing
  # else in the unit is changed.
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  exe=/bin/true
  if [ -n "$binary" ]; then
    exe="$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")"
  fi
  sed "s#/usr/local/bin/logwarden#${exe}#g" deploy/logwarden.service >"$tmp/logwarden.service"
  echo "    systemd-analyze verify (ExecStart program: $exe)"
  # verify exits 0 on mere warnings such as a misspelt key ("Unknown key ...,
  # ignoring"), which would silently drop a sandbox setting: any output fails.
  if ! out="$(systemd-analyze verify "$tmp/logwarden.service" 2>&1)" || [ -n "$out" ]; then
    printf '%s\n' "$out" >&2
    fail "systemd-analyze verify found problems"
  fi
  ok "unit verifies"
  # Sandbox score: informative, and a guard against the hardening being dropped.
  if systemd-analyze security --help 2>/dev/null | grep -q -- '--offline'; then
    systemd-analyze security --offline=yes --threshold=30 "$tmp/logwarden.service" | tail -n 1 \
      || fail "the unit's exposure score rose above 3.0"
  fi
else
  skip "systemd-analyze verify (systemd-analyze not installed)"
fi

echo
if [ "$skipped" -gt 0 ]; then
  echo "deploy/validate.sh: all run checks passed; $skipped check(s) SKIPPED (see above)"
else
  echo "deploy/validate.sh: all checks passed"
fi
