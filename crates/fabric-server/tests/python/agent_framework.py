"""A real agent framework (`openai-agents`) running a two-tool agent inside a
fabric agent, with nothing but the environment the fabric gives it
(OPENAI_BASE_URL at the agent's inference endpoint, a placeholder key).

Run by `crates/fabric-server/tests/it/python.rs` as a task of a sandboxed
agent; the mocks behind the fabric script the tool calls ("weather in Oslo"
-> get_weather, "rain" -> get_umbrella, "umbrella stand" -> the answer).
Prints what the agent did, then "ok".
"""

import asyncio

from agents import (
    Agent,
    OpenAIChatCompletionsModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from openai import AsyncOpenAI

# Traces would go to OpenAI's servers; the fabric keeps its own.
set_tracing_disabled(True)
calls = []


@function_tool
def get_weather(city: str) -> str:
    """Today's weather in a city."""
    calls.append(("get_weather", city))
    return "rain, 9 degrees"


@function_tool
def get_umbrella(size: str) -> str:
    """Fetch an umbrella of a size."""
    calls.append(("get_umbrella", size))
    return "umbrella stand: one large left"


async def main():
    model = OpenAIChatCompletionsModel(model="llama3", openai_client=AsyncOpenAI())
    agent = Agent(name="helper", instructions="Help with the weather.", model=model, tools=[get_weather, get_umbrella])
    result = await Runner.run(agent, "weather in Oslo?")
    print("calls", calls)
    print("final", result.final_output)
    assert calls == [("get_weather", "Oslo"), ("get_umbrella", "large")], calls
    assert result.final_output == "Take the large umbrella.", result.final_output
    print("ok")


asyncio.run(main())
