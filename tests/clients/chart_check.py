"""Checks the Helm chart offline with Helm's own Go SDK (helm-python-sdk) and Kubernetes'
JSON schemas (kubernetes-validate); prints one JSON report on stdout.

usage: chart_check.py CHART_DIR OUT_DIR

- lint, strict, for Kubernetes 1.29, with the default values and each values file in ci/;
- render each and validate every manifest strictly against Kubernetes 1.29 and the newest
  schema the tool ships (custom resources, whose schemas it does not ship, are listed);
- values.schema.json must reject each wrong value in WRONG;
- the rosetta.yaml files the ConfigMaps carry (with the Secret's keys.yaml beside them) are
  written under OUT_DIR/<values>/ for `rosetta config check`.
"""

import base64
import json
import os
import sys

import helm_python as helm
import kubernetes_validate
import yaml

OLDEST = "1.29.0"
CUSTOM = {
    "monitoring.coreos.com/v1",
    "keda.sh/v1alpha1",
    "gateway.networking.k8s.io/v1",
}
# (what is wrong, values): each must fail values.schema.json.
WRONG = [
    ("unknown top-level key", {"gatewy": {"replicas": 2}}),
    ("replicas not a number", {"gateway": {"replicas": "two"}}),
    ("pull policy", {"image": {"repository": "r", "pullPolicy": "Sometimes"}}),
    ("negative GPU count", {"models": [{"id": "m", "licence": "mit", "gpu": -1}]}),
    ("unknown storage type", {"models": [{"id": "m", "licence": "mit", "storage": {"type": "nfs"}}]}),
    ("model without licence", {"models": [{"id": "m"}]}),
    ("no models", {"models": []}),
    ("bad key hash", {"secrets": {"keyHashes": {"acme": [{"hash": "md5:abc"}]}}}),
    ("model name not a DNS label", {"models": [{"id": "m", "licence": "mit", "name": "Not_A_Label"}]}),
    ("log format", {"config": {"server": {"shutdown_grace_seconds": 30, "log_format": "xml"}}}),
    ("unknown tool parser", {"models": [{"id": "m", "licence": "mit", "toolParser": "hermes2"}]}),
    ("unknown backend", {"models": [{"id": "m", "licence": "mit", "backend": "vllm"}]}),
]


def main() -> None:
    chart_dir, out_dir = sys.argv[1], sys.argv[2]
    chart = helm.Chart.load(chart_dir)
    report = {"lint": {}, "rendered": {}, "invalid": [], "custom": [], "accepted_wrong": [], "newest": None}
    newest = kubernetes_validate.latest_version()
    report["newest"] = newest
    files = [None] + sorted(f for f in os.listdir(os.path.join(chart_dir, "ci")) if f.endswith(".yaml"))
    for f in files:
        label = f or "default"
        values = None
        if f:
            with open(os.path.join(chart_dir, "ci", f)) as fh:
                values = yaml.safe_load(fh)
        lint = helm.lint(chart_dir, values, strict=True, kube_version="v" + OLDEST)
        report["lint"][label] = [m for m in lint["messages"] if m["severity"] >= 2] + lint["errors"]
        manifests = chart.render(values, name="rosetta", namespace="ai", is_install=True)
        docs = []
        for path, text in manifests.items():
            if path.endswith("NOTES.txt"):
                continue
            docs.extend(d for d in yaml.safe_load_all(text) if d)
        report["rendered"][label] = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
        # Image volumes exist from Kubernetes 1.31.
        versions = [newest] if label.startswith("image-volume") else [OLDEST, newest]
        for d in docs:
            if d["apiVersion"] in CUSTOM:
                report["custom"].append(f"{label}: {d['apiVersion']} {d['kind']}")
                continue
            for v in versions:
                try:
                    kubernetes_validate.validate(d, v, strict=True)
                except Exception as e:  # noqa: BLE001 - every failure is reported
                    report["invalid"].append(f"{label}: {d['kind']}/{d['metadata']['name']} on {v}: {e}")
        write_configs(docs, os.path.join(out_dir, label.removesuffix(".yaml")))
    for what, values in WRONG:
        try:
            chart.validate_schema(chart.merge_values(values))
            report["accepted_wrong"].append(what)
        except helm.HelmError:
            pass
    print(json.dumps(report))


def write_configs(docs, out):
    """The ConfigMap's configs, with keys_file pointing at the Secret's keys.yaml beside them."""
    os.makedirs(out, exist_ok=True)
    for d in docs:
        if d["kind"] == "Secret" and "keys.yaml" in d.get("data", {}):
            for key, file in [("keys.yaml", "keys.yaml"), ("api-key", "api-key"), ("engine-token", "engine-token")]:
                if key in d["data"]:
                    with open(os.path.join(out, file), "wb") as fh:
                        fh.write(base64.b64decode(d["data"][key]))
    if not os.path.exists(os.path.join(out, "keys.yaml")):
        # secrets.existingSecret: a stand-in for the operator's own Secret.
        with open(os.path.join(out, "keys.yaml"), "w") as fh:
            yaml.safe_dump({"default": [{"hash": "sha256:" + "ab" * 32, "name": "stand-in"}]}, fh)
    for d in docs:
        if d["kind"] != "ConfigMap" or not d["metadata"]["name"].endswith("-config"):
            continue
        for name, text in d["data"].items():
            config = yaml.safe_load(text)
            auth = config.get("auth") or {}
            if "keys_file" in auth:
                auth["keys_file"] = "keys.yaml"
            with open(os.path.join(out, name), "w") as fh:
                yaml.safe_dump(config, fh)


if __name__ == "__main__":
    main()
