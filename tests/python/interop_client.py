"""One cell of the interoperability matrix (tests/interop.rs), played by the
official Python `mcp` SDK: connect to a thv-actor workload one way, try each
MCP feature the plan names, and report what happened, step by step.

Runs unchanged with the SDK 1.x and 2.x; where their APIs differ (the
streamable HTTP client yields three streams in 1.x and two in 2.x, result
fields are camelCase in 1.x and snake_case in 2.x) both are handled here.

    python interop_client.py '<plan json>'

The plan:

    {"mode": "bridge" | "http" | "sse",
     "binary": "<thv-actor>", "workload": "<name>",   # mode "bridge"
     "url": "http://127.0.0.1:<port>/mcp",             # modes "http", "sse"
     "tool": {"name": "echo", "args": {...}},
     "resource": {"uri": "demo://readme"} | {"first": true} | null,
     "prompt": {"name": "greeting", "args": {...}} | null,
     "notify": {"tool": "progress", "args": {...}} | null}

The shared key for modes "http" and "sse" comes from the environment
variable THV_INTEROP_KEY (never from argv, which other users can read), and
goes out as the `X-ToolHive-Auth` header. The bridge finds the key itself.

One JSON object goes to stdout at the end: for each step either
{"ok": {...what was seen}} or {"error": "<type>: <message>"}. The Rust test
judges it; this script only observes. Nothing else is printed on stdout.
"""

import json
import os
import sys
from contextlib import AsyncExitStack
from importlib.metadata import version

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

# Every wait is bounded: a hang is a failed step, not a stalled test.
STEP_TIMEOUT = 20


def field(obj, camel, snake):
    """A result field under its 1.x (camelCase) or 2.x (snake_case) name."""
    value = getattr(obj, camel, None)
    return value if value is not None else getattr(obj, snake, None)


def describe(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def texts(content):
    return "\n".join(c.text for c in content if getattr(c, "type", None) == "text")


async def open_streams(stack, plan):
    """The read and write streams of the connection the plan asks for."""
    mode = plan["mode"]
    if mode == "bridge":
        server = StdioServerParameters(
            command=plan["binary"], args=["bridge", plan["workload"]], env=None
        )
        streams = await stack.enter_async_context(stdio_client(server))
    else:
        headers = {"X-ToolHive-Auth": os.environ["THV_INTEROP_KEY"]}
        if mode == "sse":
            streams = await stack.enter_async_context(sse_client(plan["url"], headers=headers))
        else:
            client = await stack.enter_async_context(create_mcp_http_client(headers=headers))
            streams = await stack.enter_async_context(
                streamable_http_client(plan["url"], http_client=client)
            )
    return streams[0], streams[1]


async def run(plan, report):
    async with AsyncExitStack() as stack:
        read, write = await open_streams(stack, plan)
        session = await stack.enter_async_context(ClientSession(read, write))

        with anyio.fail_after(STEP_TIMEOUT):
            init = await session.initialize()
        info = field(init, "serverInfo", "server_info")
        report["initialize"] = {
            "ok": {
                "server": info.name,
                "version": info.version,
                "protocol": field(init, "protocolVersion", "protocol_version"),
            }
        }

        async def step(name, action):
            try:
                with anyio.fail_after(STEP_TIMEOUT):
                    report[name] = {"ok": await action()}
            except Exception as error:  # the report says what broke
                report[name] = {"error": describe(error)}

        async def tools():
            listed = await session.list_tools()
            tool = plan["tool"]
            result = await session.call_tool(tool["name"], tool.get("args", {}))
            return {
                "listed": sorted(t.name for t in listed.tools),
                "text": texts(result.content),
                "is_error": bool(field(result, "isError", "is_error")),
            }

        async def resources():
            listed = await session.list_resources()
            uris = [str(r.uri) for r in listed.resources]
            uri = plan["resource"].get("uri") or (uris[0] if uris else None)
            if uri is None:
                return {"listed": uris, "read": None}
            result = await session.read_resource(uri)
            first = result.contents[0]
            body = getattr(first, "text", None) or getattr(first, "blob", None) or ""
            return {"listed": uris, "read": uri, "length": len(body)}

        async def prompts():
            listed = await session.list_prompts()
            prompt = plan["prompt"]
            result = await session.get_prompt(prompt["name"], prompt.get("args", {}))
            return {
                "listed": sorted(p.name for p in listed.prompts),
                "first": getattr(result.messages[0].content, "text", None),
            }

        async def notify():
            seen = []

            async def on_progress(done, total, message=None):
                seen.append(done)

            call = plan["notify"]
            result = await session.call_tool(
                call["tool"], call.get("args", {}), progress_callback=on_progress
            )
            return {"progress": seen, "text": texts(result.content)}

        await step("tools", tools)
        if plan.get("resource") is not None:
            await step("resources", resources)
        if plan.get("prompt") is not None:
            await step("prompts", prompts)
        if plan.get("notify") is not None:
            await step("notifications", notify)


async def main(plan):
    report = {"sdk": version("mcp")}
    try:
        await run(plan, report)
    except BaseException as error:  # noqa: BLE001 - includes task group errors
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
        inner = error
        # anyio wraps the transport's failure in an exception group
        while getattr(inner, "exceptions", None):
            inner = inner.exceptions[0]
        key = "initialize" if "initialize" not in report else "close"
        report[key] = {"error": describe(inner)}
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    anyio.run(main, json.loads(sys.argv[1]))
