"""The official `openai` and `ollama` Python clients against a running fabric.

Run by `crates/fabric-server/tests/it/python.rs`, which starts the fabric with
two mock upstreams (local `ollama`, cloud `openai`) and an agent's Ollama
endpoint, then passes:

  FABRIC_URL               the fabric's API, e.g. http://127.0.0.1:PORT
  FABRIC_USER_TOKEN        a user token (llm:invoke)
  FABRIC_AGENT_TOKEN       an agent token
  AGENT_OLLAMA_BASE_URL    an agent's inference endpoint (no credentials)

Prints "ok" and exits 0 when every check holds.
"""

import json
import os
import sys

import ollama
import openai
from tool_loop import ANSWER, EXPECTED_CALLS, TOOL_RESULTS, TOOLS, Advice, check

BASE = os.environ["FABRIC_URL"]
USER_TOKEN = os.environ["FABRIC_USER_TOKEN"]
AGENT_TOKEN = os.environ["FABRIC_AGENT_TOKEN"]
AGENT_OLLAMA = os.environ["AGENT_OLLAMA_BASE_URL"]


def openai_client(token):
    return openai.OpenAI(base_url=f"{BASE}/v1", api_key=token, max_retries=0, timeout=30)


def check_openai(label, token):
    client = openai_client(token)
    messages = [{"role": "user", "content": "hello there"}]

    raw = client.chat.completions.with_raw_response.create(model="llama3", messages=messages)
    check(raw.headers.get("x-fabric-provider") == "ollama", f"{label}: provider header {raw.headers}")
    reply = raw.parse()
    check(reply.choices[0].message.content == "echo: hello there", f"{label}: {reply}")
    check(reply.choices[0].finish_reason == "stop", f"{label}: {reply}")
    check(reply.usage.prompt_tokens == 2 and reply.usage.completion_tokens == 3, f"{label}: {reply.usage}")

    chunks = list(
        client.chat.completions.create(
            model="llama3",
            messages=[{"role": "user", "content": "a b c"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    check(text == "echo: a b c", f"{label}: streamed {text!r}")
    check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4, f"{label}: {chunks[-1]}")

    ids = [m.id for m in client.models.list()]
    check("llama3" in ids, f"{label}: models {ids}")
    check(client.models.retrieve("llama3").id == "llama3", f"{label}: models.retrieve")
    try:
        client.models.retrieve("no-such-model")
        check(False, f"{label}: an unknown model was found")
    except openai.NotFoundError as e:
        check(e.status_code == 404, f"{label}: {e}")

    legacy = client.completions.create(model="llama3", prompt="p q", max_tokens=10)
    check(legacy.choices[0].text == "echo: p q", f"{label}: completions {legacy}")

    # The client asks for base64 by default and decodes it.
    emb = client.embeddings.create(model="embed", input=["one", "two words"])
    check(len(emb.data) == 2 and len(emb.data[0].embedding) == 8, f"{label}: {emb}")
    floats = client.embeddings.create(model="embed", input="one", encoding_format="float")
    check(abs(floats.data[0].embedding[0] - emb.data[0].embedding[0]) < 1e-6, f"{label}: base64 == float")

    raw = client.chat.completions.with_raw_response.create(
        model="llama3", messages=messages, extra_headers={"X-Fabric-Policy": "cloud"}
    )
    check(raw.headers.get("x-fabric-provider") == "openai", f"{label}: override {raw.headers}")

    try:
        client.chat.completions.create(model="llama3", messages=[])
        check(False, f"{label}: empty messages accepted")
    except openai.BadRequestError as e:
        check(e.status_code == 400, f"{label}: {e}")

    try:
        for _ in client.chat.completions.create(
            model="llama3",
            messages=[{"role": "user", "content": "go [[mock:stream-error]]"}],
            stream=True,
        ):
            pass
        check(False, f"{label}: the in-band stream error was not raised")
    except openai.APIError as e:
        check("injected stream failure" in str(e), f"{label}: {e}")


def run_tool_loop(label, next_answer):
    """Two rounds of tool calls, then the answer. `next_answer(messages)`
    returns the assistant message (an SDK object, appended as is)."""
    messages = [{"role": "user", "content": "weather in Oslo?"}]
    called = []
    for _ in range(3):
        message, finish = next_answer(messages)
        if not message.tool_calls:
            check(finish == "stop", f"{label}: final finish {finish}")
            return called, message.content
        check(finish == "tool_calls", f"{label}: finish {finish}")
        messages.append(message)
        for call in message.tool_calls:
            called.append((call.function.name, json.loads(call.function.arguments)))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": TOOL_RESULTS[call.function.name]})
    check(False, f"{label}: the loop did not end")


def check_openai_tools(label, client):
    def plain(messages):
        reply = client.chat.completions.create(model="llama3", messages=messages, tools=TOOLS)
        return reply.choices[0].message, reply.choices[0].finish_reason

    def streamed(messages):
        # The SDK's stream helper reassembles the tool-call deltas.
        with client.chat.completions.stream(model="llama3", messages=messages, tools=TOOLS) as stream:
            final = stream.get_final_completion()
        return final.choices[0].message, final.choices[0].finish_reason

    for how, next_answer in [("plain", plain), ("streamed", streamed)]:
        called, answer = run_tool_loop(f"{label} {how}", next_answer)
        check(called == EXPECTED_CALLS, f"{label} {how}: {called}")
        check(answer == ANSWER, f"{label} {how}: {answer!r}")

    # Structured output: the SDK sends a strict json_schema and parses the answer.
    parsed = client.chat.completions.parse(
        model="llama3",
        messages=[{"role": "user", "content": "should I take an umbrella?"}],
        response_format=Advice,
    )
    advice = parsed.choices[0].message.parsed
    check(advice == Advice(umbrella=True, reason="rain"), f"{label}: parsed {advice!r}")


def check_responses(label, client):
    """The Responses API, stateless: the conversation goes back whole in input."""
    tools = [{"type": "function", **t["function"]} for t in TOOLS]
    items = [{"role": "user", "content": "weather in Oslo?"}]
    called = []
    for _ in range(3):
        reply = client.responses.create(model="llama3", input=items, tools=tools, store=False)
        calls = [o for o in reply.output if o.type == "function_call"]
        if not calls:
            break
        for call in calls:
            called.append((call.name, json.loads(call.arguments)))
            items.append({"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments})
            items.append({"type": "function_call_output", "call_id": call.call_id, "output": TOOL_RESULTS[call.name]})
    check(called == EXPECTED_CALLS, f"{label}: {called}")
    check(reply.output_text == ANSWER, f"{label}: {reply}")

    # Streamed: the SDK's helper assembles the events into the response.
    with client.responses.stream(model="llama3", input="weather in Oslo?", tools=tools, store=False) as stream:
        final = stream.get_final_response()
    calls = [(o.name, json.loads(o.arguments)) for o in final.output if o.type == "function_call"]
    check(calls == [("get_weather", {"city": "Oslo"})], f"{label} streamed: {final}")
    with client.responses.stream(model="llama3", input="a b c", store=False) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
    check(text == "echo: a b c", f"{label} streamed text: {text!r}")

    parsed = client.responses.parse(model="llama3", input="should I take an umbrella?", text_format=Advice, store=False)
    check(parsed.output_parsed == Advice(umbrella=True, reason="rain"), f"{label}: {parsed}")

    try:
        client.responses.create(model="llama3", input="x", previous_response_id="resp_1")
        check(False, f"{label}: previous_response_id was accepted")
    except openai.BadRequestError as e:
        check("stores no responses" in str(e), f"{label}: {e}")


def check_ollama_tools(label, client):
    messages = [{"role": "user", "content": "weather in Oslo?"}]
    called = []
    for _ in range(3):
        reply = client.chat(model="llama3", messages=messages, tools=TOOLS)
        if not reply.message.tool_calls:
            break
        messages.append(reply.message)
        for call in reply.message.tool_calls:
            called.append((call.function.name, dict(call.function.arguments)))
            messages.append({"role": "tool", "tool_name": call.function.name, "content": TOOL_RESULTS[call.function.name]})
    check(called == EXPECTED_CALLS, f"{label}: {called}")
    check(reply.message.content == ANSWER, f"{label}: {reply.message}")
    # JSON answers; an empty images list (what litellm sends) is no image.
    reply = client.chat(
        model="llama3",
        messages=[{"role": "user", "content": "should I take an umbrella?", "images": []}],
        format=Advice.model_json_schema(),
    )
    check(Advice.model_validate_json(reply.message.content).umbrella, f"{label}: {reply.message}")


def check_ollama(label, client):
    reply = client.chat(model="llama3", messages=[{"role": "user", "content": "hi"}])
    check(reply.message.content == "echo: hi" and reply.done, f"{label}: {reply}")
    check(reply.prompt_eval_count == 1 and reply.eval_count == 2, f"{label}: {reply}")

    parts = list(client.chat(model="llama3", messages=[{"role": "user", "content": "a b c"}], stream=True))
    check("".join(p.message.content for p in parts) == "echo: a b c", f"{label}: {parts}")
    check(parts[-1].done and parts[-1].done_reason == "stop", f"{label}: {parts[-1]}")

    gen = client.generate(model="llama3", prompt="p q")
    check(gen.response == "echo: p q", f"{label}: {gen}")
    streamed = "".join(p.response for p in client.generate(model="llama3", prompt="x y", stream=True))
    check(streamed == "echo: x y", f"{label}: {streamed!r}")

    names = [m.model for m in client.list().models]
    check("llama3" in names, f"{label}: tags {names}")

    emb = client.embed(model="embed", input=["one", "two"])
    check(len(emb.embeddings) == 2 and len(emb.embeddings[0]) == 8, f"{label}: {emb}")
    legacy = client.embeddings(model="embed", prompt="one")
    check(abs(legacy.embedding[0] - emb.embeddings[0][0]) < 1e-6, f"{label}: {legacy}")

    try:
        for _ in client.chat(
            model="llama3", messages=[{"role": "user", "content": "go [[mock:stream-error]]"}], stream=True
        ):
            pass
        check(False, f"{label}: the in-band stream error was not raised")
    except ollama.ResponseError as e:
        check("injected stream failure" in str(e), f"{label}: {e}")

    try:
        client.chat(model="llama3", messages=[{"role": "tool", "content": "x"}])
        check(False, f"{label}: a tool result answering no call was accepted")
    except ollama.ResponseError as e:
        # Ollama's error shape: a string the client shows as is.
        check(e.status_code == 400 and "answers a tool call" in e.error, f"{label}: {e.error!r}")


def main():
    check_openai("user token", USER_TOKEN)
    check_openai("agent token", AGENT_TOKEN)
    check_openai_tools("openai tools", openai_client(USER_TOKEN))
    check_responses("openai responses", openai_client(USER_TOKEN))
    check_ollama_tools("ollama tools", ollama.Client(host=f"{BASE}/v1/ollama", headers={"Authorization": f"Bearer {AGENT_TOKEN}"}))
    # What an agent does with its OLLAMA_BASE_URL: no credentials at all.
    check_ollama("agent endpoint", ollama.Client(host=AGENT_OLLAMA))
    # The same API through the fabric's routes, with the agent's token.
    check_ollama(
        "fabric /v1/ollama",
        ollama.Client(host=f"{BASE}/v1/ollama", headers={"Authorization": f"Bearer {AGENT_TOKEN}"}),
    )
    print("ok")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
