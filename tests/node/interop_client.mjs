// One cell of the interoperability matrix (tests/interop.rs), played by the
// official TypeScript SDK client: connect to a thv-actor workload one way,
// try each MCP feature the plan names, and report what happened, step by
// step, as one JSON line on stdout.
//
//   node interop_client.mjs <node_modules dir> '<plan json>'
//
// The plan is the one tests/python/interop_client.py takes (mode "bridge",
// "http" or "sse"). For "http" and "sse" the shared key comes from the
// environment variable THV_INTEROP_KEY (never argv) and goes out as the
// `X-ToolHive-Auth` header through the transport's requestInit. The SDK is
// imported from the node_modules directory given (the test environment's).

import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [modules, planText] = process.argv.slice(2);
const plan = JSON.parse(planText);
const sdk = (path) => import(pathToFileURL(join(modules, "@modelcontextprotocol/sdk/dist/esm", path)).href);
const { Client } = await sdk("client/index.js");

// Every wait is bounded: a hang is a failed step, not a stalled test.
const options = { timeout: 20000 };

const describe = (error) => `${error?.name ?? "Error"}: ${String(error?.message ?? error).split("\n")[0]}`.slice(0, 300);
const texts = (content) => content.filter((c) => c.type === "text").map((c) => c.text).join("\n");

async function transportFor(plan) {
  if (plan.mode === "bridge") {
    const { StdioClientTransport } = await sdk("client/stdio.js");
    return new StdioClientTransport({ command: plan.binary, args: ["bridge", plan.workload], stderr: "ignore" });
  }
  const requestInit = { headers: { "X-ToolHive-Auth": process.env.THV_INTEROP_KEY } };
  if (plan.mode === "sse") {
    const { SSEClientTransport } = await sdk("client/sse.js");
    return new SSEClientTransport(new URL(plan.url), { requestInit });
  }
  const { StreamableHTTPClientTransport } = await sdk("client/streamableHttp.js");
  return new StreamableHTTPClientTransport(new URL(plan.url), { requestInit });
}

const report = { sdk: JSON.parse(await import("node:fs").then((fs) => fs.readFileSync(join(modules, "@modelcontextprotocol/sdk/package.json")))).version };
const client = new Client({ name: "thv-actor-interop", version: "1.0.0" }, { capabilities: {} });

async function step(name, action) {
  try {
    report[name] = { ok: await action() };
  } catch (error) {
    report[name] = { error: describe(error) };
  }
}

try {
  await client.connect(await transportFor(plan), options);
  const info = client.getServerVersion();
  report.initialize = { ok: { server: info?.name, version: info?.version } };
} catch (error) {
  report.initialize = { error: describe(error) };
}

if (report.initialize.ok) {
  await step("tools", async () => {
    const listed = await client.listTools(undefined, options);
    const result = await client.callTool({ name: plan.tool.name, arguments: plan.tool.args ?? {} }, undefined, options);
    return { listed: listed.tools.map((t) => t.name).sort(), text: texts(result.content), is_error: Boolean(result.isError) };
  });
  if (plan.resource) {
    await step("resources", async () => {
      const listed = await client.listResources(undefined, options);
      const uris = listed.resources.map((r) => r.uri);
      const uri = plan.resource.uri ?? uris[0];
      if (uri === undefined) return { listed: uris, read: null };
      const result = await client.readResource({ uri }, options);
      const first = result.contents[0];
      return { listed: uris, read: uri, length: (first.text ?? first.blob ?? "").length };
    });
  }
  if (plan.prompt) {
    await step("prompts", async () => {
      const listed = await client.listPrompts(undefined, options);
      const result = await client.getPrompt({ name: plan.prompt.name, arguments: plan.prompt.args ?? {} }, options);
      return { listed: listed.prompts.map((p) => p.name).sort(), first: result.messages[0]?.content?.text ?? null };
    });
  }
  if (plan.notify) {
    await step("notifications", async () => {
      const seen = [];
      const result = await client.callTool(
        { name: plan.notify.tool, arguments: plan.notify.args ?? {} },
        undefined,
        { ...options, onprogress: (p) => seen.push(p.progress) },
      );
      return { progress: seen, text: texts(result.content) };
    });
  }
}

try {
  await client.close();
} catch (error) {
  report.close = { error: describe(error) };
}
process.stdout.write(JSON.stringify(report) + "\n");
process.exit(0);
