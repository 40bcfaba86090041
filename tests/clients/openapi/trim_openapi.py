#!/usr/bin/env python3
"""Cuts OpenAI's OpenAPI spec down to the operations Rosetta serves, for schemathesis.

    tests/clients/.venv/bin/python tests/clients/openapi/trim_openapi.py SPEC.yaml \
        > tests/clients/openapi/openai-subset.yaml

SPEC.yaml is OpenAI's own spec (openai-openapi.yaml, MIT licence; the project keeps a copy
in its shared/ folder, outside this repository). The output keeps `openapi`, `info` (with the
licence), `security`, the five operations below, and every component they reference
transitively (`$ref`s are followed through schemas, responses, parameters, ...), each
unchanged except that OpenAI's documentation-only `x-oaiMeta` blocks (code samples in six
languages) are dropped. `servers` becomes `[{url: /v1}]`, so a base URL of
`http://HOST:PORT` resolves the paths to Rosetta's `/v1/...`.

Needs PyYAML (a schemathesis dependency: tests/clients/.venv has it).
"""

import sys

import yaml

OPERATIONS = [
    ("/chat/completions", "post"),  # createChatCompletion
    ("/completions", "post"),  # createCompletion
    ("/models", "get"),  # listModels
    ("/models/{model}", "get"),  # retrieveModel
    ("/embeddings", "post"),  # createEmbedding
]
DROPPED_KEYS = {"x-oaiMeta"}


def strip(node):
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k not in DROPPED_KEYS}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                yield v
            else:
                yield from refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from refs(v)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = yaml.safe_load(f)

    paths = {}
    for path, method in OPERATIONS:
        item = spec["paths"][path]
        kept = {method: strip(item[method])}
        if "parameters" in item:  # path-level parameters apply to every method
            kept["parameters"] = strip(item["parameters"])
        paths[path] = kept

    # Follow `#/components/<section>/<name>` references transitively.
    components = {}
    pending = list(refs(paths))
    seen = set()
    while pending:
        ref = pending.pop()
        if ref in seen:
            continue
        seen.add(ref)
        parts = ref.split("/")
        if len(parts) != 4 or parts[:2] != ["#", "components"]:
            sys.exit(f"unexpected $ref {ref!r}")
        _, _, section, name = parts
        value = strip(spec["components"][section][name])
        components.setdefault(section, {})[name] = value
        pending.extend(refs(value))
    security_schemes = spec["components"].get("securitySchemes", {})
    used = {name for req in spec.get("security", []) for name in req}
    for path, method in OPERATIONS:
        for req in paths[path][method].get("security", []):
            used.update(req)
    components["securitySchemes"] = {n: security_schemes[n] for n in sorted(used)}
    for section in components:
        components[section] = dict(sorted(components[section].items()))

    out = {
        "openapi": spec["openapi"],
        "info": spec["info"],
        "servers": [{"url": "/v1"}],
        "security": spec.get("security", []),
        "paths": paths,
        "components": components,
    }
    ops = ", ".join(f"{m.upper()} {p}" for p, m in OPERATIONS)
    sys.stdout.write(
        "# A subset of OpenAI's own OpenAPI spec (openai-openapi.yaml, info.version "
        f"{spec['info'].get('version')}, MIT licence),\n"
        "# cut by trim_openapi.py in this folder (see there): only the operations\n"
        f"# {ops}\n"
        "# and the components they reference transitively, without OpenAI's x-oaiMeta\n"
        "# documentation blocks; servers set to /v1. Used by tests/tests/schemathesis.rs.\n"
        "# Regenerate with trim_openapi.py rather than editing by hand.\n"
    )
    yaml.safe_dump(out, sys.stdout, sort_keys=False, allow_unicode=True, width=100)


if __name__ == "__main__":
    main()
