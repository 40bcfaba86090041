#!/usr/bin/env python3
"""Drives a running Rosetta server the way agents do, with the official `openai` Python SDK:
function tools (pydantic_function_tool), `chat.completions.parse` with a pydantic model,
the `chat.completions.stream` helper with tool calls, and the Responses API (plain, parsed,
function calls, and its streaming events).

Usage: openai_agents.py --base-url http://127.0.0.1:PORT --model MODEL

The model has random weights: every check relies only on what constrained decoding
guarantees (valid JSON, valid arguments) and on the shapes the SDK parses. Exits 0 when every
check passes; otherwise prints each failure and exits 1.
"""

import argparse
import json
from typing import Literal

import openai
from openai import OpenAI
from pydantic import BaseModel, Field

from checks import check, finish


# Bounded fields: whatever the random weights pick, the JSON ends well within max_tokens.
class GetWeather(BaseModel):
    """Current weather in a city."""

    city: str = Field(max_length=10)
    unit: Literal["celsius", "fahrenheit"]


class Translation(BaseModel):
    language: Literal["sw", "yo", "ha", "am"]
    words: int = Field(ge=0, le=50)
    formal: bool


MESSAGES = [{"role": "user", "content": "Hali ya hewa Nairobi ni gani?"}]


@check("chat tools: required call parsed into the pydantic model")
def chat_tool_required(client, model):
    tool = openai.pydantic_function_tool(GetWeather)
    r = client.chat.completions.parse(
        model=model, messages=MESSAGES, tools=[tool], tool_choice="required",
        parallel_tool_calls=False, max_tokens=100, seed=3,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls
    assert len(calls) == 1, calls
    call = calls[0]
    assert call.type == "function" and call.id.startswith("call_"), call
    assert call.function.name == "GetWeather", call
    parsed = call.function.parsed_arguments
    assert isinstance(parsed, GetWeather), parsed
    GetWeather.model_validate_json(call.function.arguments)


@check("chat tools: named function, then the tool's result sent back")
def chat_tool_named_round_trip(client, model):
    tool = openai.pydantic_function_tool(GetWeather, name="get_weather")
    r = client.chat.completions.create(
        model=model, messages=MESSAGES, tools=[tool],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=100, seed=5,
    )
    call = r.choices[0].message.tool_calls[0]
    GetWeather.model_validate_json(call.function.arguments)
    follow = client.chat.completions.create(
        model=model, max_tokens=8, tools=[tool],
        messages=MESSAGES + [
            r.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp": 21})},
        ],
    )
    assert follow.choices[0].message.role == "assistant", follow
    assert follow.usage.prompt_tokens > r.usage.prompt_tokens, (follow.usage, r.usage)


@check("chat.completions.parse with a pydantic response_format")
def chat_parse(client, model):
    r = client.chat.completions.parse(
        model=model, messages=[{"role": "user", "content": "Tafsiri."}],
        response_format=Translation, max_tokens=100, seed=7,
    )
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, Translation), r


@check("chat.completions.stream helper with a tool call")
def chat_stream_tools(client, model):
    tool = openai.pydantic_function_tool(GetWeather)
    seen = set()
    with client.chat.completions.stream(
        model=model, messages=MESSAGES, tools=[tool], tool_choice="required",
        parallel_tool_calls=False, max_tokens=100, seed=11,
    ) as stream:
        for event in stream:
            seen.add(event.type)
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.done" in seen, seen
    call = final.choices[0].message.tool_calls[0]
    assert isinstance(call.function.parsed_arguments, GetWeather), call
    assert final.choices[0].finish_reason == "tool_calls", final


@check("responses.create: text, usage, output_text")
def responses_text(client, model):
    r = client.responses.create(
        model=model, input="Jambo!", instructions="Be brief.", max_output_tokens=6,
    )
    assert r.object == "response" and r.id.startswith("resp_"), r
    assert r.status in ("completed", "incomplete"), r
    assert r.output[0].type == "message", r.output
    assert isinstance(r.output_text, str), r
    assert r.usage.output_tokens <= 6 and r.usage.input_tokens > 0, r.usage


@check("responses.parse with a pydantic text_format")
def responses_parse(client, model):
    r = client.responses.parse(
        model=model, input="Tafsiri.", text_format=Translation, max_output_tokens=100,
    )
    assert isinstance(r.output_parsed, Translation), r


@check("responses: a required function call, its output sent back as items")
def responses_function_call(client, model):
    tools = [{
        "type": "function", "name": "get_weather", "strict": True,
        "parameters": GetWeather.model_json_schema() | {"additionalProperties": False},
    }]
    r = client.responses.create(
        model=model, input="Hali ya hewa?", tools=tools, tool_choice="required",
        parallel_tool_calls=False, max_output_tokens=100,
    )
    calls = [o for o in r.output if o.type == "function_call"]
    assert len(calls) == 1, r.output
    GetWeather.model_validate_json(calls[0].arguments)
    follow = client.responses.create(
        model=model, tools=tools, max_output_tokens=5,
        input=[
            {"role": "user", "content": "Hali ya hewa?"},
            calls[0].model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "21C"},
        ],
    )
    assert follow.usage.input_tokens > r.usage.input_tokens, (follow.usage, r.usage)


@check("responses streaming events")
def responses_stream(client, model):
    types = []
    text = ""
    # A bounded structured output ends by itself (the helper wants `response.completed`; a
    # response cut at max_output_tokens ends with `response.incomplete`, as OpenAI's does).
    with client.responses.stream(
        model=model, input="Jambo!", max_output_tokens=100, text_format=Translation,
    ) as stream:
        for event in stream:
            types.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
        final = stream.get_final_response()
    assert types[0] == "response.created", types
    for t in ("response.output_item.added", "response.content_part.added",
              "response.output_text.done", "response.output_item.done"):
        assert t in types, (t, types)
    assert types[-1] == "response.completed", types
    assert final.output_text == text, (final.output_text, text)
    assert isinstance(final.output_parsed, Translation), final

    # Greedy, so the answer is the same every run: sampled, the random test model sometimes
    # drew its end-of-sequence token within 3 tokens, and the response completed.
    cut = [e.type for e in client.responses.create(
        model=model, input="Jambo!", max_output_tokens=3, temperature=0, stream=True)]
    assert cut[-1] == "response.incomplete", cut

    tools = [{"type": "function", "name": "get_weather", "strict": True,
              "parameters": GetWeather.model_json_schema() | {"additionalProperties": False}}]
    args = ""
    done = None
    stream = client.responses.create(
        model=model, input="Hali ya hewa?", tools=tools, tool_choice="required",
        parallel_tool_calls=False, max_output_tokens=100, stream=True,
    )
    for event in stream:
        if event.type == "response.function_call_arguments.delta":
            args += event.delta
        elif event.type == "response.function_call_arguments.done":
            done = event.arguments
    assert done is not None and done == args, (done, args)
    GetWeather.model_validate_json(done)


@check("bad tool_choice is a BadRequestError naming the parameter")
def bad_tool_choice(client, model):
    try:
        client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=2,
            tools=[openai.pydantic_function_tool(GetWeather)],
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )
    except openai.BadRequestError as e:
        assert e.body["param"] == "tool_choice", e.body
    else:
        raise AssertionError("expected a 400")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True)
    args = p.parse_args()
    client = OpenAI(base_url=f"{args.base_url}/v1", api_key="unused", max_retries=0, timeout=120)
    for test in (chat_tool_required, chat_tool_named_round_trip, chat_parse, chat_stream_tools,
                 responses_text, responses_parse, responses_function_call, responses_stream,
                 bad_tool_choice):
        test(client, args.model)
    finish()


if __name__ == "__main__":
    main()
