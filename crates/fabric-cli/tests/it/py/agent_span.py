"""What an instrumented agent does in a task: parents its own span on the
TRACEPARENT the fabric gives it, sends that span's context as the
`traceparent` header on its LLM call (OLLAMA_BASE_URL), and exports its span
over OTLP/HTTP to OTLP_URL."""
import json
import os
import secrets
import time
import urllib.request

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

version, trace_id, parent_id, flags = os.environ["TRACEPARENT"].split("-")
span_id = secrets.token_hex(8)
start = time.time_ns()
call = urllib.request.Request(
    os.environ["OLLAMA_BASE_URL"] + "/api/chat",
    data=json.dumps({"model": "llama3", "stream": False,
                     "messages": [{"role": "user", "content": "traced"}]}).encode(),
    headers={"content-type": "application/json",
             "traceparent": f"00-{trace_id}-{span_id}-01"},
)
with urllib.request.urlopen(call, timeout=30) as r:
    answer = json.load(r)
end = time.time_ns()

request = ExportTraceServiceRequest()
rs = request.resource_spans.add()
kv = rs.resource.attributes.add()
kv.key, kv.value.string_value = "service.name", "test-agent"
span = rs.scope_spans.add().spans.add()
span.trace_id = bytes.fromhex(trace_id)
span.span_id = bytes.fromhex(span_id)
span.parent_span_id = bytes.fromhex(parent_id)
span.name = "agent.work"
span.kind = 1
span.start_time_unix_nano, span.end_time_unix_nano = start, end
urllib.request.urlopen(urllib.request.Request(
    os.environ["OTLP_URL"], data=request.SerializeToString(),
    headers={"content-type": "application/x-protobuf"}), timeout=30).read()
print("agent-span-ok", answer["message"]["content"])
