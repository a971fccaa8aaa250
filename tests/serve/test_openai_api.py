"""The OpenAI-compatible server end to end: the official `openai` client against a live uvicorn + LLMEngine.

Streaming and non-streaming chat, n and seed, completions echo + logprobs checked against a full
forward pass (what lm-evaluation-harness relies on), json_schema / json_object outputs validated
with jsonschema, forced tool calls, and OpenAI-style 4xx errors after which the server still serves.

    python -m pytest -q tests/serve/test_openai_api.py
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
import torch

from genlab.data.chat import render_chat
from genlab.models.hf_io import load_pretrained
from genlab.tokenizers import BPETokenizer
from serve_helpers import API_KEY, MAX_SEQ_LEN, MODEL_NAME

USER = [{"role": "user", "content": "What is 12 + 30?"}]
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def reference(model_dir):
    return load_pretrained(model_dir), BPETokenizer.load(model_dir)


def test_models_health_and_page(live_server, client):
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]
    assert httpx.get(live_server.base_url + "/health").json()["status"] == "ok"
    page = httpx.get(live_server.base_url + "/")
    assert page.status_code == 200 and "genlab chat" in page.text and "text/event-stream" not in page.headers["content-type"]


def test_streaming_chat_equals_non_streaming(client, reference):
    kwargs = dict(model=MODEL_NAME, messages=USER, max_tokens=12, temperature=0)
    full = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len(deltas) >= 2, "the reply arrived in several pieces"
    assert "".join(deltas) == full.choices[0].message.content
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens > 0
    prompt, _ = render_chat(USER, reference[1], add_generation_prompt=True)
    assert full.usage.prompt_tokens == chunks[-1].usage.prompt_tokens == len(prompt)


def test_chat_n2_seed_reproducible(client):
    kwargs = dict(model=MODEL_NAME, messages=USER, max_tokens=10, temperature=1.0, n=2, seed=1234)
    first = client.chat.completions.create(**kwargs)
    again = client.chat.completions.create(**kwargs)
    other = client.chat.completions.create(**{**kwargs, "seed": 99})
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1]
    assert texts == [c.message.content for c in again.choices]
    assert texts[0] != texts[1], "choice i samples with seed + i"
    assert texts != [c.message.content for c in other.choices]


def test_chat_logprobs(client):
    out = client.chat.completions.create(model=MODEL_NAME, messages=USER, max_tokens=6, temperature=0, logprobs=True,
                                         top_logprobs=3)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-5)  # greedy picks the top token
    assert "".join(bytes(e.bytes).decode("utf-8", "replace") for e in content) == out.choices[0].message.content


@pytest.mark.parametrize("as_ids", [False, True])
def test_completion_echo_logprobs_equal_full_forward(client, reference, as_ids):
    model, tok = reference
    text = "The quick brown fox jumps over the lazy dog."
    ids = tok.encode(text)
    out = client.completions.create(model=MODEL_NAME, prompt=ids if as_ids else text, max_tokens=0, echo=True,
                                    logprobs=2, temperature=0)
    choice = out.choices[0]
    lp = choice.logprobs
    with torch.no_grad():
        expected = torch.log_softmax(model(torch.tensor([ids]))[0].double(), dim=-1)
    assert choice.text == text
    assert lp.tokens == [tok.token_bytes(i).decode() for i in ids]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    want = [float(expected[p - 1, ids[p]]) for p in range(1, len(ids))]
    assert lp.token_logprobs[1:] == pytest.approx(want, abs=1e-4)
    for p in range(1, len(ids)):
        top_id = int(expected[p - 1].argmax())
        top_text = tok.token_bytes(top_id).decode("utf-8", "backslashreplace")
        assert lp.top_logprobs[p][top_text] == pytest.approx(float(expected[p - 1, top_id]), abs=1e-4)
    assert lp.text_offset == [len(tok.decode(ids[:p])) for p in range(len(ids))]
    assert out.usage.prompt_tokens == len(ids) and out.usage.completion_tokens == 0


def test_completion_lm_eval_style_max_tokens_1(client, reference):
    """lm-evaluation-harness local-completions: echo, logprobs=1, max_tokens=1; scores token_logprobs[ctxlen:-1]."""
    model, tok = reference
    context, continuation = tok.encode("Ana lives in"), tok.encode(" Brightwater")
    out = client.completions.create(model=MODEL_NAME, prompt=[context + continuation], max_tokens=1, echo=True,
                                    logprobs=1, temperature=0)
    lp = out.choices[0].logprobs
    assert len(lp.token_logprobs) == len(context) + len(continuation) + 1
    with torch.no_grad():
        full = torch.log_softmax(model(torch.tensor([context + continuation]))[0].double(), dim=-1)
    ids = context + continuation
    want = sum(float(full[p - 1, ids[p]]) for p in range(len(context), len(ids)))
    assert sum(lp.token_logprobs[len(context):-1]) == pytest.approx(want, abs=1e-3)
    greedy_next = int(full[-1].argmax())
    assert lp.tokens[-1] == tok.token_bytes(greedy_next).decode("utf-8", "backslashreplace")


def test_completions_batch_of_prompts_and_stream(client):
    out = client.completions.create(model=MODEL_NAME, prompt=["Hello", "The model"], max_tokens=5, n=2, seed=3,
                                    temperature=0.8)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    streamed = client.completions.create(model=MODEL_NAME, prompt="Hello", max_tokens=5, seed=3, temperature=0.8,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == out.choices[0].text


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer"},
        "colour": {"enum": ["red", "green", "blue"]},
        "flags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
    },
    "required": ["name", "age", "colour"],
}


def test_json_schema_response_format_validates(client):
    out = client.chat.completions.create(
        model=MODEL_NAME, messages=USER, max_tokens=120, temperature=1.0, n=3, seed=5,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}})
    for choice in out.choices:
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)


def test_json_object_response_format(client):
    out = client.chat.completions.create(model=MODEL_NAME, messages=USER, max_tokens=80, temperature=1.0, seed=2,
                                         response_format={"type": "json_object"})
    assert isinstance(json.loads(out.choices[0].message.content), dict)


def test_unsupported_schema_is_a_400_naming_the_feature(client):
    schema = {"type": "object", "patternProperties": {"^x": {"type": "integer"}}}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL_NAME, messages=USER, max_tokens=20,
                                       response_format={"type": "json_schema",
                                                        "json_schema": {"name": "x", "schema": schema}})
    assert "patternProperties" in err.value.body["message"] and err.value.body["param"] == "response_format"


CALCULATOR = {"type": "function", "function": {
    "name": "calculator", "description": "evaluates a + b, a - b or a * b on integers",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string", "maxLength": 12}},
                   "required": ["expression"]}}}
LOOKUP = {"type": "function", "function": {"name": "lookup", "description": "returns the document about a person",
                                           "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                                                          "required": ["query"]}}}


def test_forced_tool_choice_returns_tool_calls(client):
    out = client.chat.completions.create(model=MODEL_NAME, messages=USER, max_tokens=80, tools=[CALCULATOR, LOOKUP],
                                         tool_choice={"type": "function", "function": {"name": "calculator"}})
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "calculator" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), CALCULATOR["function"]["parameters"])


def test_required_tool_choice_streams_a_tool_call_and_history_round_trips(client):
    chunks = list(client.chat.completions.create(model=MODEL_NAME, messages=USER, max_tokens=80, temperature=0.7,
                                                 seed=1, tools=[CALCULATOR, LOOKUP], tool_choice="required",
                                                 stream=True))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function.name in ("calculator", "lookup")
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    # the call goes back as an assistant message with tool_calls, and its result as a tool message
    history = USER + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": calls[0].id, "type": "function", "function": {"name": calls[0].function.name,
                                                             "arguments": calls[0].function.arguments}}]},
        {"role": "tool", "tool_call_id": calls[0].id, "content": "42"}]
    out = client.chat.completions.create(model=MODEL_NAME, messages=history, max_tokens=5, tools=[CALCULATOR],
                                         tool_choice="none", temperature=0)
    assert out.choices[0].finish_reason in ("stop", "length")


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["message"]
    return body


def test_error_cases_are_openai_errors_and_the_server_keeps_serving(live_server, client):
    url = live_server.base_url + "/v1/chat/completions"
    good = {"model": MODEL_NAME, "messages": USER, "max_tokens": 3}
    assert _error(httpx.post(url, json={**good, "temperature": 5}, headers=AUTH), 400)["param"] == "temperature"
    assert _error(httpx.post(url, json={**good, "model": "gpt-9"}, headers=AUTH), 404)["code"] == "model_not_found"
    body = _error(httpx.post(url, json={**good, "max_tokens": 10 * MAX_SEQ_LEN}, headers=AUTH), 400)
    assert body["param"] == "max_tokens" and str(MAX_SEQ_LEN) in body["message"]
    assert _error(httpx.post(url, content=b'{"model": ', headers={**AUTH, "Content-Type": "application/json"}),
                  400)["code"] == "invalid_json"
    assert _error(httpx.post(url, json=good, headers={"Authorization": "Bearer wrong"}), 401)["code"] == "invalid_api_key"
    assert _error(httpx.post(url, json=good), 401)["code"] == "invalid_api_key"
    assert _error(httpx.post(url, json={**good, "n": 0}, headers=AUTH), 400)["param"] == "n"
    assert _error(httpx.post(url, json={**good, "messages": []}, headers=AUTH), 400)["param"] == "messages"
    assert _error(httpx.post(url, json={**good, "messages": [{"role": "wizard", "content": "x"}]}, headers=AUTH),
                  400)["param"].startswith("messages")
    assert _error(httpx.post(url, json={**good, "top_logprobs": 2}, headers=AUTH), 400)["param"] == "top_logprobs"
    assert _error(httpx.post(url, json=[1, 2], headers=AUTH), 400)
    completions = live_server.base_url + "/v1/completions"
    assert _error(httpx.post(completions, json={"model": MODEL_NAME, "prompt": [[1, 2, 10 ** 6]]}, headers=AUTH),
                  400)["param"] == "prompt"
    assert _error(httpx.post(completions, json={"model": MODEL_NAME, "prompt": "x", "logprobs": 50}, headers=AUTH),
                  400)["param"] == "logprobs"
    assert _error(httpx.post(completions, json={"model": MODEL_NAME, "prompt": [[5] * (MAX_SEQ_LEN + 3)]}, headers=AUTH),
                  400)["code"] == "context_length_exceeded"
    assert _error(httpx.get(live_server.base_url + "/v1/nothing", headers=AUTH), 404)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=live_server.base_url + "/v1", api_key="bad", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL_NAME, messages=USER, temperature=-1)
    # still serving, and it counted the errors
    assert client.chat.completions.create(model=MODEL_NAME, messages=USER, max_tokens=2).choices
    metrics = httpx.get(live_server.base_url + "/metrics").json()
    assert metrics["requests"]["errors_400"] >= 10 and metrics["requests"]["errors_404"] >= 2
    assert httpx.get(live_server.base_url + "/health").status_code == 200


def test_metrics_report_latency_and_blocks(live_server, client):
    client.chat.completions.create(model=MODEL_NAME, messages=USER, max_tokens=4, temperature=0)
    metrics = httpx.get(live_server.base_url + "/metrics").json()
    assert metrics["ttft_ms"]["p50"] > 0 and metrics["tpot_ms"]["p50"] > 0
    assert metrics["kv_blocks"]["total"] == 256 and metrics["kv_blocks"]["in_use"] == 0
    assert metrics["throughput_tokens_per_s"]["busy"] > 0
