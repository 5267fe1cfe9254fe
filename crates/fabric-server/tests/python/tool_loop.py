"""What the Python client tests share: the two tools of the mocks' scripted
loop ("weather in Oslo" -> get_weather, "rain" -> get_umbrella, "umbrella
stand" -> the answer), what those tools answer, and the JSON answer's shape
("should I take")."""

import pydantic

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Today's weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_umbrella",
            "description": "Fetch an umbrella",
            "parameters": {"type": "object", "properties": {"size": {"type": "string"}}, "required": ["size"]},
        },
    },
]

# What the tools answer; the mocks' script goes on from these words.
TOOL_RESULTS = {"get_weather": "rain, 9 degrees", "get_umbrella": "umbrella stand: one large left"}
EXPECTED_CALLS = [("get_weather", {"city": "Oslo"}), ("get_umbrella", {"size": "large"})]
ANSWER = "Take the large umbrella."


class Advice(pydantic.BaseModel):
    umbrella: bool
    reason: str


def check(condition, what):
    if not condition:
        raise AssertionError(what)
