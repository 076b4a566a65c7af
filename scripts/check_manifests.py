#!/usr/bin/env python3
"""Checks rendered Kubernetes manifests for what the deploy issue promises:
pods run as non-root with a read-only root filesystem and dropped capabilities, the server has
startup, liveness and readiness probes, exactly one migration Job exists (a pre-install,
pre-upgrade hook in the Helm chart), replicas never migrate, and the termination grace period
covers the shutdown grace plus the preStop pause. With --database-scheme, every rendered
DATABASE_URL (the replicas' Secret and the migration hook's) uses that scheme.

Usage: check_manifests.py (--helm|--kustomize) FILE [--rules RULES_FILE] [--database-scheme S]
"""
import argparse
import sys

import yaml

parser = argparse.ArgumentParser()
parser.add_argument("file")
parser.add_argument("--helm", action="store_true")
parser.add_argument("--rules")
parser.add_argument("--database-scheme")
args = parser.parse_args()

docs = [d for d in yaml.safe_load_all(open(args.file)) if d]
errors = []


def check(cond, message):
    if not cond:
        errors.append(message)


by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)

configmaps = {c["metadata"]["name"]: c.get("data", {}) for c in by_kind.get("ConfigMap", [])}


def pod_checks(owner, spec):
    pod = spec["template"]["spec"]
    sc = pod.get("securityContext", {})
    check(sc.get("runAsNonRoot") is True, f"{owner}: pod securityContext.runAsNonRoot")
    check(pod.get("automountServiceAccountToken") is False, f"{owner}: service account token mounted")
    for c in pod["containers"]:
        csc = c.get("securityContext", {})
        check(csc.get("readOnlyRootFilesystem") is True, f"{owner}/{c['name']}: readOnlyRootFilesystem")
        check(csc.get("allowPrivilegeEscalation") is False, f"{owner}/{c['name']}: allowPrivilegeEscalation")
        check(csc.get("capabilities", {}).get("drop") == ["ALL"], f"{owner}/{c['name']}: drop ALL")
        check("resources" in c, f"{owner}/{c['name']}: resources")
    return pod


deployments = by_kind.get("Deployment", [])
components = [d["metadata"]["labels"].get("app.kubernetes.io/component") for d in deployments]
check(components.count("server") == 1 and set(components) <= {"server", "event-worker"}
      and components.count("event-worker") <= 1,
      f"expected one server Deployment and at most one event worker, got {components}")
worker = "event-worker" in components
for d in deployments:
    name = d["metadata"]["name"]
    pod = pod_checks(f"Deployment {name}", d["spec"])
    c = pod["containers"][0]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        check(probe in c, f"Deployment {name}: {probe} missing")
    check(c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/ready", "readiness probes /ready")
    check(c.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/health", "liveness probes /health")
    check("migrate" not in c.get("args", []), "the server does not run migrate")
    env = {}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps.get(source["configMapRef"]["name"], {}))
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
    check(env.get("RUN_MIGRATIONS") == "false", "replicas must run with RUN_MIGRATIONS=false")
    # With an event worker, only it delivers the event webhooks; the servers queue them.
    component = d["metadata"]["labels"].get("app.kubernetes.io/component")
    if worker:
        wanted = "true" if component == "event-worker" else "false"
        check(env.get("EVENT_WEBHOOK_DELIVERY") == wanted,
              f"Deployment {name}: EVENT_WEBHOOK_DELIVERY={env.get('EVENT_WEBHOOK_DELIVERY')}, want {wanted}")
        check(bool(env.get("EVENT_WEBHOOK_URL")), f"Deployment {name}: an event worker without EVENT_WEBHOOK_URL")
    grace = int(env.get("SHUTDOWN_GRACE_SECONDS", "20"))
    pause = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    check(pause > 0, "a preStop pause lets the load balancer deregister the pod")
    check(pod.get("terminationGracePeriodSeconds", 30) > grace + pause,
          "terminationGracePeriodSeconds must exceed SHUTDOWN_GRACE_SECONDS + preStop")
    check(len(pod.get("topologySpreadConstraints", [])) >= 1, "topology spread")
    # Message templates (messageTemplates): a ConfigMap of <locale>.txt files, each with {code},
    # mounted where OTP_TEMPLATES_DIR points.
    for cm in by_kind.get("ConfigMap", []):
        if not cm["metadata"]["name"].endswith("-templates"):
            continue
        for key, text in cm.get("data", {}).items():
            check(key.endswith(".txt") and "{code}" in text, f"template {key} without {{code}}")
        volumes = [v["name"] for v in pod.get("volumes", [])
                   if v.get("configMap", {}).get("name") == cm["metadata"]["name"]]
        mounts = [m["mountPath"] for m in c.get("volumeMounts", []) if m["name"] in volumes]
        check(len(mounts) == 1 and env.get("OTP_TEMPLATES_DIR") == mounts[0],
              f"templates mounted at {mounts}, OTP_TEMPLATES_DIR={env.get('OTP_TEMPLATES_DIR')}")

jobs = by_kind.get("Job", [])
check(len(jobs) == 1, f"expected exactly one migration Job, got {len(jobs)}")
for j in jobs:
    pod = pod_checks(f"Job {j['metadata']['name']}", j["spec"])
    check(pod["containers"][0].get("args") == ["migrate"], "the Job runs `otpgate migrate`")
    if args.helm:
        hooks = j["metadata"].get("annotations", {}).get("helm.sh/hook", "")
        check(set(hooks.split(",")) == {"pre-install", "pre-upgrade"}, f"Job hook is {hooks!r}")

if args.database_scheme:
    urls = [(sec["metadata"]["name"], sec.get("stringData", {}).get("DATABASE_URL"))
            for sec in by_kind.get("Secret", [])]
    urls = [(name, url) for name, url in urls if url is not None]
    check(len(urls) == 2, f"expected DATABASE_URL in the replicas' and the migration's Secret, got {urls}")
    for name, url in urls:
        check(url.startswith(args.database_scheme + "://"),
              f"Secret {name}: DATABASE_URL is not a {args.database_scheme}:// URL")

for rule in by_kind.get("PrometheusRule", []):
    check(args.rules is not None, "PrometheusRule rendered but no rules file to compare")
    if args.rules:
        shipped = yaml.safe_load(open(args.rules))["groups"]
        check(rule["spec"]["groups"] == shipped, "PrometheusRule differs from the shipped rules")

if errors:
    print("\n".join(f"FAIL {e}" for e in errors))
    sys.exit(1)
print(f"ok: {args.file}: {sum(len(v) for v in by_kind.values())} objects, {', '.join(sorted(by_kind))}")
