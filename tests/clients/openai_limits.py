#!/usr/bin/env python3
"""Rate limits and access control as the official `openai` Python SDK sees them.

Usage: openai_limits.py --base-url URL --key KEY --model MODEL --rpm N --denied-model M

The key's tenant must allow N requests per minute to MODEL and be denied DENIED_MODEL.
Exits 0 when every check passes.
"""

import argparse
import sys

import openai
from openai import OpenAI


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--base-url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--rpm", type=int, required=True)
    p.add_argument("--denied-model", required=True)
    args = p.parse_args()
    base = args.base_url.rstrip("/") + "/v1"
    client = OpenAI(base_url=base, api_key=args.key, max_retries=0, timeout=60)
    messages = [{"role": "user", "content": "Hola"}]

    # A wrong key is an AuthenticationError.
    try:
        OpenAI(base_url=base, api_key="rsk-wrong", max_retries=0).models.list()
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError as e:
        assert e.status_code == 401 and e.code == "invalid_api_key", e

    # A model the tenant's licence rules deny is a PermissionDeniedError naming it.
    try:
        client.chat.completions.create(model=args.denied_model, messages=messages, max_tokens=1)
        raise AssertionError("a denied model answered")
    except openai.PermissionDeniedError as e:
        assert e.status_code == 403 and e.code == "model_access_denied", e
        assert args.denied_model in e.message, e.message

    # The first N requests of the minute pass, counting down in the headers...
    for i in range(args.rpm):
        raw = client.chat.completions.with_raw_response.create(
            model=args.model, messages=messages, max_tokens=1
        )
        raw.parse()
        remaining = int(raw.headers["x-ratelimit-remaining-requests"])
        assert int(raw.headers["x-ratelimit-limit-requests"]) == args.rpm, raw.headers
        assert remaining == args.rpm - 1 - i, (i, remaining)
        assert raw.headers["x-ratelimit-reset-requests"], raw.headers
    # ...and the next is a RateLimitError whose Retry-After is when one request is back.
    try:
        client.chat.completions.create(model=args.model, messages=messages, max_tokens=1)
        raise AssertionError(f"request {args.rpm + 1} of a {args.rpm}/min limit was admitted")
    except openai.RateLimitError as e:
        assert e.status_code == 429 and e.code == "rate_limit_exceeded", e
        assert e.type == "requests", e.type
        retry_after = int(e.response.headers["retry-after"])
        per_request = 60 / args.rpm
        assert per_request - 5 <= retry_after <= per_request + 1, (retry_after, per_request)
        assert int(e.response.headers["retry-after-ms"]) <= retry_after * 1000
        assert e.response.headers["x-ratelimit-remaining-requests"] == "0"
    print(f"openai {openai.__version__}: all rate-limit and access checks passed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAIL: {e!r}")
        sys.exit(1)
