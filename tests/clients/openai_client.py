#!/usr/bin/env python3
"""Drives a running Rosetta server with the official `openai` Python SDK.

Usage: openai_client.py --base-url http://127.0.0.1:PORT [--model tiny]

Exits 0 when every check passes; otherwise prints each failure and exits 1.
"""

import argparse

import openai
from openai import OpenAI

from checks import check, finish


@check("models.list")
def models_list(client, model):
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert model in ids, f"{model} not in {ids}"
    for m in models.data:
        assert m.object == "model", m
        assert isinstance(m.created, int), m
        assert m.owned_by, m
    got = client.models.retrieve(model)
    assert got.id == model, got


@check("chat.completions.create")
def chat(client, model):
    r = client.chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Habari ya asubuhi, 你好, नमस्ते, Привет"},
        ],
        max_tokens=12,
        temperature=0,
        seed=1,
        user="sdk-test",
        extra_body={"ignore_eos": True},
    )
    assert r.object == "chat.completion", r
    assert r.id.startswith("chatcmpl-"), r.id
    assert r.model == model, r.model
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.index == 0
    assert c.message.role == "assistant"
    assert isinstance(c.message.content, str) and c.message.content, c
    assert c.finish_reason == "length", c.finish_reason
    assert r.usage.completion_tokens == 12, r.usage
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage
    return c.message.content


@check("chat.completions.create(logprobs)")
def chat_logprobs(client, model):
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        extra_body={"ignore_eos": True},
    )
    content = r.choices[0].logprobs.content
    assert len(content) == 4, content
    for t in content:
        assert t.logprob <= 0, t
        assert len(t.top_logprobs) == 2, t
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob, t


@check("chat.completions.create(stream=True)")
def chat_stream(client, model):
    kwargs = dict(
        model=model,
        messages=[{"role": "user", "content": "Tell me a story"}],
        max_tokens=16,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    full = client.chat.completions.create(**kwargs).choices[0].message.content
    parts, finish, usage = [], None, None
    stream = client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk", chunk
        assert chunk.id.startswith("chatcmpl-"), chunk.id
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == [], chunk
        for ch in chunk.choices:
            if ch.delta.content:
                parts.append(ch.delta.content)
            if ch.finish_reason:
                finish = ch.finish_reason
    assert "".join(parts) == full, ("".join(parts), full)
    assert finish == "length", finish
    assert usage is not None and usage.completion_tokens == 16, usage


@check("completions.create")
def completions(client, model):
    r = client.completions.create(model=model, prompt=["Once upon a time", "Il était une fois"],
                                  max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
    assert r.object == "text_completion", r
    assert r.id.startswith("cmpl-"), r.id
    assert sorted(c.index for c in r.choices) == [0, 1], r.choices
    assert all(isinstance(c.text, str) for c in r.choices)
    assert r.usage.completion_tokens == 10, r.usage
    parts = []
    for chunk in client.completions.create(model=model, prompt="Once upon a time", max_tokens=5,
                                           temperature=0, stream=True, extra_body={"ignore_eos": True}):
        parts.extend(c.text for c in chunk.choices)
    first = next(c.text for c in r.choices if c.index == 0)
    assert "".join(parts) == first, ("".join(parts), first)


@check("bad request raises BadRequestError")
def bad_request(client, model):
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], temperature=5)
    except openai.BadRequestError as e:
        assert e.status_code == 400, e
        # The SDK unwraps {"error": {...}} into e.body.
        assert isinstance(e.body, dict) and e.body.get("type") == "invalid_request_error", e.body
        return
    raise AssertionError("temperature=5 did not raise openai.BadRequestError")


@check("empty messages raise BadRequestError")
def empty_messages(client, model):
    try:
        client.chat.completions.create(model=model, messages=[])
    except openai.BadRequestError:
        return
    raise AssertionError("messages=[] did not raise openai.BadRequestError")


@check("unknown model raises NotFoundError")
def unknown_model(client, model):
    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    except openai.NotFoundError as e:
        assert e.status_code == 404, e
        assert e.code == "model_not_found", e.code
    else:
        raise AssertionError("an unknown model did not raise openai.NotFoundError")
    try:
        client.models.retrieve("no-such-model")
    except openai.NotFoundError:
        return
    raise AssertionError("models.retrieve of an unknown model did not raise openai.NotFoundError")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--base-url", required=True, help="server root, e.g. http://127.0.0.1:8080")
    p.add_argument("--model", default="tiny")
    args = p.parse_args()
    base = args.base_url.rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    client = OpenAI(base_url=base, api_key="sk-rosetta-test", max_retries=0, timeout=60)
    print(f"openai {openai.__version__} against {base}")
    for test in (models_list, chat, chat_logprobs, chat_stream, completions, bad_request, empty_messages,
                 unknown_model):
        test(client, args.model)
    finish()


if __name__ == "__main__":
    main()
