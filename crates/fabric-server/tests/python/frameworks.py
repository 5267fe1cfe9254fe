"""Client libraries and frameworks beyond the official OpenAI and Ollama
clients, through a running fabric (issue #18): the `anthropic` SDK, `litellm`
(its ollama_chat/, openai/ and anthropic/ providers, all at an agent's
inference endpoint) and `langchain-openai` (bind_tools, with_structured_output).

Run by `crates/fabric-server/tests/it/python.rs` with the environment of
`gateway_clients.py`; the mocks behind the fabric script a two-round tool
loop ("weather in Oslo" -> get_weather, "rain" -> get_umbrella, "umbrella
stand" -> the answer) and a JSON answer ("should I take").

Prints "ok" and exits 0 when every check holds.
"""

import json
import os
import sys

# litellm would fetch its model price list from the internet at import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import anthropic  # noqa: E402
import litellm  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langchain_openai import ChatOpenAI  # noqa: E402
from tool_loop import ANSWER, EXPECTED_CALLS, TOOL_RESULTS, TOOLS, Advice, check  # noqa: E402

BASE = os.environ["FABRIC_URL"]
USER_TOKEN = os.environ["FABRIC_USER_TOKEN"]
AGENT_ENDPOINT = os.environ["AGENT_OLLAMA_BASE_URL"]
# The agent endpoint asks for no key; clients that insist on one get this.
NO_KEY = "fabric-agent-endpoint-no-key-needed"

OPENAI_TOOLS = TOOLS
ANTHROPIC_TOOLS = [
    {"name": t["function"]["name"], "description": t["function"]["description"], "input_schema": t["function"]["parameters"]}
    for t in OPENAI_TOOLS
]


def check_anthropic(label, client):
    messages = [{"role": "user", "content": "weather in Oslo?"}]
    called = []
    for _ in range(3):
        reply = client.messages.create(model="llama3", max_tokens=300, tools=ANTHROPIC_TOOLS, messages=messages)
        uses = [b for b in reply.content if b.type == "tool_use"]
        if not uses:
            break
        check(reply.stop_reason == "tool_use", f"{label}: {reply}")
        messages.append({"role": "assistant", "content": [b.model_dump() for b in reply.content]})
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": u.id, "content": TOOL_RESULTS[u.name]} for u in uses
                ],
            }
        )
        called.extend((u.name, u.input) for u in uses)
    check(called == EXPECTED_CALLS, f"{label}: {called}")
    text = "".join(b.text for b in reply.content if b.type == "text")
    check(text == ANSWER and reply.stop_reason == "end_turn", f"{label}: {reply}")

    # Streamed: the SDK's helper assembles the tool_use block from its deltas.
    with client.messages.stream(
        model="llama3", max_tokens=300, tools=ANTHROPIC_TOOLS, messages=[{"role": "user", "content": "weather in Oslo?"}]
    ) as stream:
        final = stream.get_final_message()
    uses = [b for b in final.content if b.type == "tool_use"]
    check([(u.name, u.input) for u in uses] == EXPECTED_CALLS[:1], f"{label} streamed: {final}")

    try:
        client.messages.create(model="llama3", max_tokens=10, messages=[])
        check(False, f"{label}: a bad request was accepted")
    except anthropic.BadRequestError as e:
        check(e.status_code == 400, f"{label}: {e}")


def litellm_loop(label, **kwargs):
    messages = [{"role": "user", "content": "weather in Oslo?"}]
    called = []
    for _ in range(3):
        reply = litellm.completion(messages=messages, tools=OPENAI_TOOLS, **kwargs)
        message = reply.choices[0].message
        if not message.tool_calls:
            break
        messages.append(message.model_dump())
        for call in message.tool_calls:
            called.append((call.function.name, json.loads(call.function.arguments)))
            messages.append(
                {"role": "tool", "tool_call_id": call.id, "name": call.function.name,
                 "content": TOOL_RESULTS[call.function.name]}
            )
    check(called == EXPECTED_CALLS, f"{label}: {called}")
    check(message.content == ANSWER, f"{label}: {message}")


def check_litellm():
    # One agent endpoint, three of litellm's providers: Ollama's API, OpenAI's, Anthropic's.
    litellm_loop("litellm ollama_chat", model="ollama_chat/llama3", api_base=AGENT_ENDPOINT)
    litellm_loop("litellm openai", model="openai/llama3", api_base=f"{AGENT_ENDPOINT}/v1", api_key=NO_KEY)
    litellm_loop("litellm anthropic", model="anthropic/llama3", api_base=AGENT_ENDPOINT, api_key=NO_KEY)
    text = litellm.completion(
        model="ollama_chat/llama3", api_base=AGENT_ENDPOINT, messages=[{"role": "user", "content": "hi there"}]
    ).choices[0].message.content
    check(text == "echo: hi there", f"litellm plain: {text!r}")


@tool
def get_weather(city: str) -> str:
    """Today's weather in a city."""
    return TOOL_RESULTS["get_weather"]


def check_langchain():
    llm = ChatOpenAI(model="llama3", base_url=f"{BASE}/v1", api_key=USER_TOKEN, max_retries=0, timeout=30)
    reply = llm.bind_tools([get_weather]).invoke("weather in Oslo?")
    check(
        [(c["name"], c["args"]) for c in reply.tool_calls] == [("get_weather", {"city": "Oslo"})],
        f"langchain bind_tools: {reply}",
    )
    advice = llm.with_structured_output(Advice).invoke("should I take an umbrella?")
    check(advice == Advice(umbrella=True, reason="rain"), f"langchain with_structured_output: {advice!r}")
    streamed = "".join(chunk.content for chunk in llm.stream("a b c"))
    check(streamed == "echo: a b c", f"langchain stream: {streamed!r}")


def main():
    check_anthropic("anthropic (fabric API, x-api-key)", anthropic.Anthropic(base_url=BASE, api_key=USER_TOKEN, max_retries=0))
    check_anthropic("anthropic (agent endpoint)", anthropic.Anthropic(base_url=AGENT_ENDPOINT, api_key=NO_KEY, max_retries=0))
    check_litellm()
    check_langchain()
    print("ok")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
