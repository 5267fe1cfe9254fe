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

import os
import sys

import ollama
import openai

BASE = os.environ["FABRIC_URL"]
USER_TOKEN = os.environ["FABRIC_USER_TOKEN"]
AGENT_TOKEN = os.environ["FABRIC_AGENT_TOKEN"]
AGENT_OLLAMA = os.environ["AGENT_OLLAMA_BASE_URL"]


def check(condition, what):
    if not condition:
        raise AssertionError(what)


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
        check(False, f"{label}: a tool message was accepted")
    except ollama.ResponseError as e:
        check(e.status_code == 400, f"{label}: {e}")


def main():
    check_openai("user token", USER_TOKEN)
    check_openai("agent token", AGENT_TOKEN)
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
