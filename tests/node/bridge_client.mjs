// An MCP client from the official TypeScript SDK that launches
// `thv-actor bridge <workload>` over stdio (StdioClientTransport, with the
// SDK's default environment) and reports what it saw as one JSON line.
//
//   node bridge_client.mjs <node_modules dir> <thv-actor> <workload> <tool> '<args json>'
//
// The SDK is imported from the node_modules directory given (the test
// environment's, outside this tree), so the script needs no install here.

import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [modules, binary, workload, tool, args] = process.argv.slice(2);
const sdk = (path) => import(pathToFileURL(join(modules, "@modelcontextprotocol/sdk/dist/esm", path)).href);
const { Client } = await sdk("client/index.js");
const { StdioClientTransport } = await sdk("client/stdio.js");

// Every wait is bounded: a hang fails the test instead of stalling it.
const timeout = { timeout: 30000 };

const transport = new StdioClientTransport({ command: binary, args: ["bridge", workload], stderr: "inherit" });
const client = new Client({ name: "thv-actor-node-test", version: "1.0.0" }, { capabilities: {} });
await client.connect(transport, timeout);

const tools = await client.listTools(undefined, timeout);
const result = await client.callTool({ name: tool, arguments: JSON.parse(args) }, undefined, timeout);
const report = {
  server: client.getServerVersion()?.name,
  tools: tools.tools.map((t) => t.name).sort(),
  text: result.content.filter((c) => c.type === "text").map((c) => c.text).join("\n"),
  is_error: Boolean(result.isError),
};
await client.close();
process.stdout.write(JSON.stringify(report) + "\n");
