"""A small MCP client for the serve end-to-end tests.

Connects to URL with the official `mcp` Python SDK (1.x or 2.x, whichever
venv runs it), sending the header X-ToolHive-Auth from $THV_TEST_KEY when it
is set, lists the tools, calls one, and prints one JSON object on stdout:

    {"ok": true, "sdk": "...", "protocol_version": "...", "server": "...",
     "tools": ["..."], "calls": [<tool result>, ...]}

On failure it prints {"ok": false, "error": "<type>: <message>"} and exits 2.

    python mcp_client.py URL [--transport streamable-http|sse]
        [--call TOOL] [--args JSON] [--repeat N]
        [--barrier DIR --barrier-count N]

--repeat calls the tool N times; with --args-list JSON (an array of
argument objects) it calls once per element, in order. --barrier makes the
client, once initialised, wait until N clients have reached the barrier
(files in DIR), so that several clients really overlap.
"""

import argparse
import asyncio
import json
import os
import sys
import time
from importlib.metadata import version

from mcp import ClientSession
from mcp.shared._httpx_utils import create_mcp_http_client

TIMEOUT = 30.0


def headers():
    key = os.environ.get("THV_TEST_KEY")
    return {"X-ToolHive-Auth": key} if key else {}


def dump(result):
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)


async def barrier(directory, count):
    if not directory:
        return
    open(os.path.join(directory, str(os.getpid())), "w").close()
    deadline = time.monotonic() + TIMEOUT
    while len(os.listdir(directory)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError("the other clients never reached the barrier")
        await asyncio.sleep(0.02)


async def session_run(read, write, opts):
    async with ClientSession(read, write) as session:
        init = await session.initialize()
        await barrier(opts.barrier, opts.barrier_count)
        tools = await session.list_tools()
        calls = []
        if opts.call:
            if opts.args_list is not None:
                arg_sets = json.loads(opts.args_list)
            else:
                arg_sets = [json.loads(opts.args)] * opts.repeat
            for arguments in arg_sets:
                calls.append(dump(await session.call_tool(opts.call, arguments)))
        return {
            "ok": True,
            "sdk": version("mcp"),
            "protocol_version": str(init.protocol_version if hasattr(init, "protocol_version") else init.protocolVersion),
            "server": init.server_info.name if hasattr(init, "server_info") else init.serverInfo.name,
            "tools": [t.name for t in tools.tools],
            "calls": calls,
        }


async def run(opts):
    if opts.transport == "sse":
        from mcp.client.sse import sse_client

        async with sse_client(opts.url, headers=headers(), timeout=TIMEOUT) as streams:
            return await session_run(streams[0], streams[1], opts)

    from mcp.client.streamable_http import streamable_http_client

    async with create_mcp_http_client(headers=headers()) as http:
        async with streamable_http_client(opts.url, http_client=http) as streams:
            # 1.x yields (read, write, get_session_id), 2.x (read, write)
            return await session_run(streams[0], streams[1], opts)


def describe(exc):
    # anyio task groups wrap the real failure in exception groups
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--transport", default="streamable-http")
    parser.add_argument("--call")
    parser.add_argument("--args", default="{}")
    parser.add_argument("--args-list")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--barrier")
    parser.add_argument("--barrier-count", type=int, default=1)
    opts = parser.parse_args()

    try:
        result = asyncio.run(asyncio.wait_for(run(opts), TIMEOUT * 1.5))
    except BaseException as exc:  # noqa: BLE001 - the test reads the message
        print(json.dumps({"ok": False, "error": describe(exc)}), flush=True)
        sys.exit(2)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
