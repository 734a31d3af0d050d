"""An MCP client, from the official Python SDK, that launches
`thv-actor bridge <workload>` over stdio and reports what it saw.

Runs unchanged with the `mcp` SDK 1.x and 2.x: only the ClientSession API
that both have is used (initialize, list_*, call_tool, read_resource,
get_prompt, and the sampling, logging and message callbacks).

The bridge is launched with the SDK's own default environment
(`env=None`): HOME, LOGNAME, PATH, SHELL, TERM and USER from this process,
nothing else. The caller sets HOME to the test's home directory.

    python bridge_client.py <thv-actor> <workload> '<plan json>'

The plan says what to do beyond listing:

    {"calls": [{"tool": "echo", "args": {...}, "progress": true}],
     "reads": ["demo://readme"], "read_first": true,
     "prompts": [{"name": "greeting", "args": {"name": "Ada"}}],
     "wait_logs": 8}

One JSON object goes to stdout at the end (the Rust test asserts on it);
nothing else is printed there.
"""

import json
import sys
from importlib.metadata import version

import anyio
import mcp.types as types
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

# Every wait is bounded: a hang fails the test instead of stalling it.
CALL_TIMEOUT = 30


def method_of(message):
    """The method of a notification from either SDK generation, or None."""
    inner = getattr(message, "root", message)
    return getattr(inner, "method", None)


async def main(binary, workload, plan):
    report = {
        "sdk": version("mcp"),
        "calls": [],
        "reads": [],
        "prompt_results": [],
        "logs": [],
        "notifications": [],
        "sampling_requests": [],
    }

    async def on_sampling(context, params):
        first = params.messages[0].content
        report["sampling_requests"].append(getattr(first, "text", None))
        return types.CreateMessageResult.model_validate(
            {
                "role": "assistant",
                "content": {"type": "text", "text": "sampled by the python test client"},
                "model": "thv-test-model",
                "stopReason": "endTurn",
            }
        )

    async def on_log(params):
        report["logs"].append({"level": str(params.level), "data": params.data})

    async def on_message(message):
        if isinstance(message, Exception):
            report["notifications"].append(f"exception: {message}")
            return
        method = method_of(message)
        if method is not None:
            report["notifications"].append(method)

    server = StdioServerParameters(command=binary, args=["bridge", workload], env=None)
    async with stdio_client(server) as (read, write):
        async with ClientSession(
            read,
            write,
            sampling_callback=on_sampling,
            logging_callback=on_log,
            message_handler=on_message,
        ) as session:
            with anyio.fail_after(CALL_TIMEOUT):
                init = await session.initialize()
            report["server"] = init.serverInfo.name if hasattr(init, "serverInfo") else init.server_info.name
            report["protocol_version"] = getattr(init, "protocolVersion", None) or getattr(
                init, "protocol_version", None
            )
            caps = init.capabilities

            with anyio.fail_after(CALL_TIMEOUT):
                tools = await session.list_tools()
            report["tools"] = sorted(t.name for t in tools.tools)

            if caps.resources is not None:
                with anyio.fail_after(CALL_TIMEOUT):
                    resources = await session.list_resources()
                report["resources"] = [str(r.uri) for r in resources.resources]
            if caps.prompts is not None:
                with anyio.fail_after(CALL_TIMEOUT):
                    prompts = await session.list_prompts()
                report["prompts"] = sorted(p.name for p in prompts.prompts)

            for call in plan.get("calls", []):
                progress = []

                async def on_progress(done, total, message=None, progress=progress):
                    progress.append(done)

                with anyio.fail_after(CALL_TIMEOUT):
                    result = await session.call_tool(
                        call["tool"],
                        call.get("args", {}),
                        progress_callback=on_progress if call.get("progress") else None,
                    )
                texts = [c.text for c in result.content if getattr(c, "type", None) == "text"]
                is_error = getattr(result, "isError", None)
                if is_error is None:
                    is_error = getattr(result, "is_error", False)
                report["calls"].append(
                    {"tool": call["tool"], "text": "\n".join(texts), "is_error": bool(is_error), "progress": progress}
                )

            reads = list(plan.get("reads", []))
            if plan.get("read_first") and report.get("resources"):
                reads.append(report["resources"][0])
            for uri in reads:
                with anyio.fail_after(CALL_TIMEOUT):
                    result = await session.read_resource(uri)
                report["reads"].append(getattr(result.contents[0], "text", None))

            for prompt in plan.get("prompts", []):
                with anyio.fail_after(CALL_TIMEOUT):
                    result = await session.get_prompt(prompt["name"], prompt.get("args", {}))
                report["prompt_results"].append(getattr(result.messages[0].content, "text", None))

            # Notifications not tied to a request (logging) come on the
            # workload's own stream; give them a bounded time to arrive.
            wait = plan.get("wait_logs", 0)
            with anyio.move_on_after(wait):
                while not report["logs"]:
                    await anyio.sleep(0.05)

    print(json.dumps(report))


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))
