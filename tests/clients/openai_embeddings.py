#!/usr/bin/env python3
"""Drives a running Rosetta server's /v1/embeddings with the official `openai` Python SDK.

Usage: openai_embeddings.py --base-url http://127.0.0.1:PORT --model e5

The SDK asks for base64 by default and decodes it; these checks compare that with
`encoding_format="float"`, and exercise `dimensions` and the SDK's error classes.
Exits 0 when every check passes; otherwise prints each failure and exits 1.
"""

import argparse
import math
import struct

import openai
from openai import OpenAI

from checks import check, finish

TEXTS = ["Habari za asubuhi, rafiki yangu.", "今天天气很好。", "Good morning, my friend."]


def norm(v):
    return math.sqrt(sum(x * x for x in v))


@check("embeddings.create (default: base64, decoded by the SDK)")
def default_encoding(client, model):
    r = client.embeddings.create(model=model, input=TEXTS)
    assert r.object == "list", r
    assert r.model == model, r
    assert [d.index for d in r.data] == [0, 1, 2], r
    for d in r.data:
        assert d.object == "embedding", d
        assert isinstance(d.embedding, list) and len(d.embedding) == 64, len(d.embedding)
        assert abs(norm(d.embedding) - 1.0) < 1e-5, norm(d.embedding)
    assert r.usage.prompt_tokens == r.usage.total_tokens > len(TEXTS), r.usage
    floats = client.embeddings.create(model=model, input=TEXTS, encoding_format="float")
    # JSON carries each f32 in its shortest decimal form: the same f32 once narrowed.
    f32 = lambda v: list(struct.unpack(f"{len(v)}f", struct.pack(f"{len(v)}f", *v)))
    for a, b in zip(r.data, floats.data):
        assert a.embedding == f32(b.embedding), "base64 and float disagree"


@check("embeddings.create with dimensions")
def dimensions(client, model):
    r = client.embeddings.create(model=model, input=TEXTS[0], dimensions=16)
    v = r.data[0].embedding
    assert len(v) == 16, len(v)
    assert abs(norm(v) - 1.0) < 1e-5, norm(v)


@check("embeddings errors are the SDK's exceptions")
def errors(client, model):
    try:
        client.embeddings.create(model=model, input="habari " * 600)
    except openai.BadRequestError as e:
        assert e.code == "context_length_exceeded", e
    else:
        raise AssertionError("an input past the context did not raise BadRequestError")
    try:
        client.embeddings.create(model="no-such-model", input="x")
    except openai.NotFoundError:
        pass
    else:
        raise AssertionError("an unknown model did not raise NotFoundError")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--base-url", required=True, help="server root, e.g. http://127.0.0.1:8080")
    p.add_argument("--model", default="e5")
    args = p.parse_args()
    base = args.base_url.rstrip("/") + "/v1"
    client = OpenAI(base_url=base, api_key="sk-rosetta-test", max_retries=0, timeout=60)
    print(f"openai {openai.__version__} against {base}")
    for test in (default_encoding, dimensions, errors):
        test(client, args.model)
    finish()


if __name__ == "__main__":
    main()
