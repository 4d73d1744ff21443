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
#   4. deploy/logwarden.{example,compose,scale}.yml with `logwarden check-config`, when a
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
  # The scaled stack: three replicas behind nginx, Redis (docker-compose.scale.yml).
  docker-compose -f docker-compose.yml -f docker-compose.scale.yml config -q
  ok "docker-compose v1 accepts it (and the docker-compose.scale.yml override)"
  ran=$((ran + 1))
fi
if docker compose version >/dev/null 2>&1; then
  echo "    $(docker compose version --short 2>/dev/null): docker compose -f docker-compose.yml config -q"
  docker compose -f docker-compose.yml config -q
  docker compose -f docker-compose.yml --profile alloy config -q
  docker compose -f docker-compose.yml -f docker-compose.scale.yml config -q
  ok "docker compose v2 accepts it (and the docker-compose.scale.yml override)"
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
  deploy/prometheus.scale.yml
  deploy/logwarden.scale.yml
  docker-compose.scale.yml
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
step "deploy/logwarden.{example,compose,scale}.yml: logwarden check-config"
if [ -n "$binary" ]; then
  [ -x "$binary" ] || fail "$binary is not an executable file"
  for cfg in deploy/logwarden.example.yml deploy/logwarden.compose.yml deploy/logwarden.scale.yml; do
    "$binary" check-config "$cfg" || fail "logwarden check-config rejected $cfg"
    ok "$cfg accepted by $binary"
  done
else
  skip "logwarden check-config (no binary given: run deploy/validate.sh target/release/logwarden)"
fi

# --- 4b. Kubernetes manifests and the balancer ------------------------------------
step "deploy/kubernetes: YAML syntax, required objects, kustomize build"
if command -v python3 >/dev/null 2>&1 && python3 -c 'import yaml' >/dev/null 2>&1; then
  python3 - deploy/kubernetes <<'PY' || fail "deploy/kubernetes manifests are incomplete or invalid"
import glob, sys, yaml
kinds = {}
for path in sorted(glob.glob(sys.argv[1] + "/*.yaml")):
    for doc in yaml.safe_load_all(open(path)):
        if doc is None or doc.get("kind") == "Kustomization":
            continue
        for key in ("apiVersion", "kind", "metadata"):
            if key not in doc:
                sys.exit(f"{path}: a document has no {key}")
        kinds.setdefault(doc["kind"], []).append(doc)
for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
             "ConfigMap", "Secret"):
    if kind not in kinds:
        sys.exit(f"no {kind} in deploy/kubernetes")
app = next(d for d in kinds["Deployment"] if d["metadata"]["name"] == "logwarden")
if app["spec"]["replicas"] < 2:
    sys.exit("the logwarden Deployment must run 2+ replicas")
c = app["spec"]["template"]["spec"]["containers"][0]
if c["readinessProbe"]["httpGet"]["path"] != "/ready" or c["livenessProbe"]["httpGet"]["path"] != "/healthz":
    sys.exit("probes must use /ready (readiness) and /healthz (liveness)")
# The embedded logwarden config and rules must be YAML themselves.
cm = next(d for d in kinds["ConfigMap"] if d["metadata"]["name"] == "logwarden")
for name, text in cm["data"].items():
    if not isinstance(yaml.safe_load(text), dict):
        sys.exit(f"ConfigMap logwarden: {name} is not a YAML mapping")
PY
  ok "manifests parse; Deployment (2+ replicas, probes), Service, HPA, PDB, ConfigMap, Secret present"
  if [ -n "$binary" ]; then
    # The ConfigMap's config and rules, written out as the pod mounts them (rules path
    # rewritten to the copy), checked by the binary like the other configs.
    tmp_cm="$(mktemp -d)"
    python3 - deploy/kubernetes/configmap.yaml "$tmp_cm" <<'PY' || fail "could not extract the ConfigMap"
import os, sys, yaml
cm, out = sys.argv[1], sys.argv[2]
doc = next(d for d in yaml.safe_load_all(open(cm)) if d and d.get("kind") == "ConfigMap")
os.makedirs(os.path.join(out, "rules"))
for name, text in doc["data"].items():
    path = os.path.join(out, name if name == "logwarden.yml" else os.path.join("rules", name))
    with open(path, "w") as f:
        f.write(text.replace("/etc/logwarden/rules/", out + "/rules/"))
PY
    "$binary" check-config "$tmp_cm/logwarden.yml" || { rm -rf "$tmp_cm"; fail "logwarden check-config rejected the ConfigMap's logwarden.yml"; }
    rm -rf "$tmp_cm"
    ok "the ConfigMap's logwarden.yml (with its rules) accepted by $binary"
  fi
else
  skip "Kubernetes YAML check (python3 with PyYAML not found)"
fi
if command -v kubectl >/dev/null 2>&1; then
  kubectl kustomize deploy/kubernetes >/dev/null || fail "kubectl kustomize deploy/kubernetes failed"
  ok "kubectl kustomize builds it (schema validation needs an API server: not done here)"
else
  skip "kubectl kustomize (kubectl not found)"
fi

step "deploy/nginx-scale.conf: nginx -t"
if command -v nginx >/dev/null 2>&1; then
  tmp_nginx="$(mktemp)"
  # The compose service names do not resolve here: test a copy pointing at loopback.
  sed -e 's/server logwarden:/server 127.0.0.1:/; s/server logwarden-2:/server 127.0.0.2:/' \
      -e 's/server logwarden-3:/server 127.0.0.3:/' deploy/nginx-scale.conf >"$tmp_nginx"
  nginx -t -q -c "$tmp_nginx" || { rm -f "$tmp_nginx"; fail "nginx rejects deploy/nginx-scale.conf"; }
  rm -f "$tmp_nginx"
  ok "nginx accepts it"
else
  skip "nginx -t (nginx not found; Debian: apt-get install nginx-light)"
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
