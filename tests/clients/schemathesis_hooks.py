"""Schemathesis hooks for tests/tests/schemathesis.rs (loaded with SCHEMATHESIS_HOOKS).

OpenAI's spec lets `model` be any string (or one of OpenAI's own model names), so almost
every generated request would stop at Rosetta's 404 for an unknown model and never reach
the engine. In positive mode this points three of every four JSON bodies that name a model
at the served test model (ROSETTA_TEST_MODEL; ROSETTA_TEST_EMBEDDING_MODEL for /embeddings),
so generation, streaming and the sampling
parameters are exercised too; the fourth keeps the generated name. The choice is a
checksum of the generated body, so a run stays reproducible under a fixed seed. Negative
cases are left exactly as generated.
"""

import json
import os
import zlib

import schemathesis
from schemathesis import GenerationMode

MODEL = os.environ.get("ROSETTA_TEST_MODEL", "tiny")
EMBEDDING_MODEL = os.environ.get("ROSETTA_TEST_EMBEDDING_MODEL", "e5")


@schemathesis.hook
def map_case(context, case):
    meta = case.meta
    if meta is None or meta.generation.mode != GenerationMode.POSITIVE:
        return case
    body = case.body
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return case
    digest = zlib.crc32(json.dumps(body, sort_keys=True, default=str).encode())
    if digest % 4 != 0:
        body = dict(body)
        body["model"] = EMBEDDING_MODEL if case.operation.path == "/embeddings" else MODEL
        case.body = body
    return case
