"""The thv-actor benchmark suite: every benchmark compares thv-actor with its
peers side by side in one run and prints ratios, because the machine is
noisy (the load generator, the proxy and the upstream share its cores).

Run it through `bench/run` (which installs the peers and builds the release
binary first):

    ./bench/run                  every benchmark
    ./bench/run proxy bridge     some of them (proxy, stdio, bridge, memory, peer)

Everything listens on 127.0.0.1; every loop is bounded in time and count.
Raw results go to bench/out/ (results.json, wrk output, peer logs).

Environment:
    BENCH_SECONDS   length of each wrk run and each calls/s window (default 10
                    for wrk, half of it for the MCP call windows)
"""

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
OUT = BENCH / "out"
THV = REPO / "target" / "release" / "thv-actor"
NODE_BIN = BENCH / "node" / "node_modules" / ".bin"
VENV_BIN = BENCH / ".venv" / "bin"
LUA = BENCH / "post.lua"

SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
CALL_SECONDS = max(1.0, SECONDS / 2)
PROTOCOL = "2025-06-18"
IN_FLIGHT = 8
INIT_SAMPLES = 5
SPAWN_SAMPLES = 3
MAX_CALLS = 200_000
FIXED_BODY = '{"jsonrpc":"2.0","id":1,"result":{}}'

BENCHES = ["proxy", "stdio", "bridge", "memory", "peer"]


class BenchError(Exception):
    """A benchmark could not run; the message says which part failed."""


# --- processes and ports ---------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{proc.args[0]} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def rss_kb(pid, field="VmRSS"):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pids):
    """User plus system CPU time of these processes (all their threads)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            continue
    return total / tick


def descendants(pid):
    """Every live descendant of pid (walks /proc by PPid)."""
    children = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("PPid:"):
                    children.setdefault(int(line.split()[1]), []).append(int(entry.name))
                    break
        except OSError:
            continue
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Run:
    """One benchmark's temporary world: a HOME of its own (so serve's state
    and the peers' caches are private), the kernel keyring as keystore, and
    every process it started, stopped at the end by pid."""

    def __init__(self, name):
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix=f"thv-bench-{name}-"))
        self.home = self.dir / "home"
        self.home.mkdir()
        self.env = dict(os.environ)
        self.env.update(
            HOME=str(self.home),
            THV_ACTOR_KEYSTORE="keyutils",
            RUST_LOG="warn",
            NO_COLOR="1",
        )
        self.env.pop("THV_ACTOR_CONFIG", None)
        self.env.pop("THV_ACTOR_STATE_DIR", None)
        self.env.pop("THV_ACTOR_VALIDATOR", None)
        self.procs = []
        self.workloads = []
        self.logs = OUT / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def log(self, label):
        return open(self.logs / f"{self.name}-{label}.log", "wb")

    def spawn(self, label, argv, env=None, **kw):
        proc = subprocess.Popen(
            [str(a) for a in argv],
            env=env or self.env,
            stdin=kw.pop("stdin", subprocess.DEVNULL),
            stdout=kw.pop("stdout", self.log(label)),
            stderr=self.log(label + ".err"),
            start_new_session=True,
            **kw,
        )
        self.procs.append(proc)
        return proc

    def stop(self, proc, timeout=10.0):
        # The process first, so that serve (or a peer) stops its own
        # children; then whatever is left of its process group.
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if proc in self.procs:
            self.procs.remove(proc)

    def thv(self, *args, env=None):
        return subprocess.run(
            [str(THV), *args], env=env or self.env, capture_output=True, text=True, timeout=30
        )

    def serve(self, workloads, label="serve", validator=None):
        """Starts serve with a config of workloads (name -> TOML lines) and
        returns (proc, {name: url}, {name: key})."""
        config = self.home / f"{label}.toml"
        config.write_text(
            "".join(f'[[workloads]]\nname = "{n}"\n{body}\n' for n, body in workloads.items())
        )
        env = dict(self.env)
        if validator:
            env["THV_ACTOR_VALIDATOR"] = validator
        # A state dir per serve: two serves of one run never share a lock.
        env["THV_ACTOR_STATE_DIR"] = str(self.dir / f"state-{label}")
        proc = self.spawn(label, [THV, "serve", "--config", config], env=env, stdout=subprocess.PIPE)
        urls = read_serve_urls(proc, list(workloads), timeout=30)
        keys = {}
        for name, body in workloads.items():
            self.workloads.append((name, env))
            if "shared_key_auth = false" in body:
                continue
            shown = self.thv("key", "show", name, env=env)
            if shown.returncode != 0:
                raise BenchError(f"thv-actor key show {name}: {shown.stderr.strip()}")
            keys[name] = shown.stdout.strip()
        return proc, urls, keys, env

    def close(self):
        for proc in list(reversed(self.procs)):
            self.stop(proc)
        for name, env in self.workloads:
            self.thv("key", "delete", name, env=env)
        shutil.rmtree(self.dir, ignore_errors=True)


def read_serve_urls(proc, names, timeout):
    """Reads serve's `<name>  <url>  (...)` lines from its stdout."""
    urls, done = {}, threading.Event()

    def reader():
        for raw in proc.stdout:
            parts = raw.decode(errors="replace").split()
            if len(parts) >= 2 and parts[0] in names:
                urls[parts[0]] = parts[1]
                if len(urls) == len(names):
                    done.set()
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    done.wait(timeout)
    if len(urls) != len(names):
        raise BenchError(f"serve printed {sorted(urls)} of {names} (exit {proc.poll()}); see bench/out/logs")
    return urls


def port_of(url):
    return int(re.match(r"http://[^:/]+:(\d+)", url).group(1))


def unique(stem):
    return f"b{os.getpid()}-{stem}"


# --- nginx and wrk ---------------------------------------------------------


def nginx_conf(run, label, key, servers, upstreams):
    tmp = run.dir / label
    tmp.mkdir(exist_ok=True)
    temps = "".join(f"  {k}_temp_path {tmp}/{k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    ups = "".join(
        f"  upstream {name} {{ server 127.0.0.1:{port}; keepalive 64; }}\n" for name, port in upstreams.items()
    )
    conf = f"""worker_processes 2;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
{temps}  keepalive_requests 1000000;
  keepalive_timeout 60s;
  map $http_x_toolhive_auth $thv_key_ok {{ default 0; "{key}" 1; }}
{ups}{servers}}}
"""
    path = tmp / "nginx.conf"
    path.write_text(conf)
    path.chmod(0o600)
    return path


def check_server(port, upstream):
    """An nginx server that refuses requests without the key and proxies
    the rest with keep-alive, streaming responses as they come."""
    return f"""  server {{
    listen 127.0.0.1:{port};
    location / {{
      if ($thv_key_ok = 0) {{ return 401; }}
      proxy_pass http://{upstream};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 300s;
    }}
  }}
"""


def start_nginx(run, conf, ports):
    proc = run.spawn(conf.parent.name, ["nginx", "-p", conf.parent, "-c", conf])
    for port in ports:
        wait_port(port, proc=proc)
    return proc


def wrk(label, url, key, connections, threads, latency, seconds=None):
    seconds = int(seconds or SECONDS)
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", str(LUA)]
    if latency:
        argv.append("--latency")
    env = dict(os.environ, THV_BENCH_KEY=key or "")
    out = subprocess.run([*argv, url], env=env, capture_output=True, text=True, timeout=seconds + 60)
    (OUT / "wrk").mkdir(parents=True, exist_ok=True)
    (OUT / "wrk" / f"{label}-c{connections}.txt").write_text(" ".join(argv + [url]) + "\n" + out.stdout + out.stderr)
    match = re.search(r"^BENCH_JSON (.*)$", out.stdout, re.M)
    if not match:
        raise BenchError(f"wrk {label}: no summary ({out.stderr.strip()[:200]})")
    result = json.loads(match.group(1))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    bad = sum(result[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts", "non_2xx"))
    if bad:
        raise BenchError(f"wrk {label}: {bad} failed requests (see bench/out/wrk/{label}-c{connections}.txt)")
    return result


# --- a small HTTP/1.1 client (keep-alive, Content-Length, chunked, SSE) -----


class Http:
    """One keep-alive connection. Small on purpose: a general client (httpx)
    costs more per request than the proxies being measured."""

    def __init__(self, url):
        m = re.match(r"http://([^:/]+):(\d+)(/.*)$", url)
        self.host, self.port, self.path = m.group(1), int(m.group(2)), m.group(3)
        self.reader = self.writer = None

    async def close(self):
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None

    async def request(self, method, headers, body=b""):
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 22)
        lines = [f"{method} {self.path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *rest = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        hdrs = {}
        for line in rest:
            if ":" in line:
                k, v = line.split(":", 1)
                hdrs[k.strip().lower()] = v.strip()
        if "content-length" in hdrs:
            data = await self.reader.readexactly(int(hdrs["content-length"]))
        elif hdrs.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                if size == 0:
                    while (await self.reader.readline()) not in (b"\r\n", b""):
                        pass
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            data = b"".join(parts)
        elif status in (202, 204, 304) or method == "HEAD":
            data = b""
        else:
            data = await self.reader.read()
            await self.close()
        if hdrs.get("connection", "").lower() == "close":
            await self.close()
        return status, hdrs, data


def mcp_messages(hdrs, data):
    if hdrs.get("content-type", "").startswith("text/event-stream"):
        out, buf = [], []
        for line in data.decode().split("\n"):
            line = line.rstrip("\r")
            if line.startswith("data:"):
                buf.append(line[5:].lstrip())
            elif not line and buf:
                out.append(json.loads("\n".join(buf)))
                buf = []
        if buf:
            out.append(json.loads("\n".join(buf)))
        return out
    return [json.loads(data)] if data.strip() else []


def initialize_message(rid):
    return {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "initialize",
        "params": {
            "protocolVersion": PROTOCOL,
            "capabilities": {},
            "clientInfo": {"name": "thv-bench", "version": "1"},
        },
    }


def echo_message(rid):
    return {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": f"m{rid}"}},
    }


def check_echo(reply, rid):
    try:
        ok = reply["result"]["content"][0]["text"] == f"m{rid}"
    except (KeyError, IndexError, TypeError):
        ok = False
    if not ok:
        raise BenchError(f"echo {rid} answered {json.dumps(reply)[:200]}")


class HttpSession:
    """An MCP streamable-HTTP session (initialize first) over keep-alive
    connections."""

    def __init__(self, url, key):
        self.url = url
        self.base = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if key:
            self.base["X-ToolHive-Auth"] = key
        self.session = None
        self.next_id = 1

    def headers(self):
        h = dict(self.base)
        if self.session:
            h["Mcp-Session-Id"] = self.session
            h["MCP-Protocol-Version"] = PROTOCOL
        return h

    async def call(self, conn, message):
        status, hdrs, data = await conn.request("POST", self.headers(), json.dumps(message).encode())
        if status >= 300:
            raise BenchError(f"{self.url}: {message.get('method')} got HTTP {status}: {data[:200]!r}")
        if "mcp-session-id" in hdrs and not self.session:
            self.session = hdrs["mcp-session-id"]
        if "id" not in message:
            return None
        for reply in mcp_messages(hdrs, data):
            if reply.get("id") == message["id"] and ("result" in reply or "error" in reply):
                return reply
        raise BenchError(f"{self.url}: no answer to {message.get('method')} in {data[:200]!r}")

    async def initialize(self, conn):
        """Returns the seconds from the initialize POST to its answer."""
        started = time.perf_counter()
        reply = await self.call(conn, initialize_message(0))
        elapsed = time.perf_counter() - started
        if "result" not in reply:
            raise BenchError(f"{self.url}: initialize failed: {reply}")
        await self.call(conn, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        return elapsed

    async def delete(self, conn):
        if self.session:
            await conn.request("DELETE", self.headers())

    def rid(self):
        self.next_id += 1
        return self.next_id


async def timed_calls(workers, seconds, one_call):
    """Runs `workers` loops of one_call for `seconds`; returns calls/s."""
    count = 0
    deadline = time.perf_counter() + seconds

    async def loop(index):
        nonlocal count
        while time.perf_counter() < deadline and count < MAX_CALLS:
            await asyncio.wait_for(one_call(index), 30)
            count += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop(i) for i in range(workers)))
    return count / (time.perf_counter() - started)


async def measure_http(url, key):
    """Median initialize time over fresh sessions, then echo calls/s
    sequential and with IN_FLIGHT in flight on one session."""
    warm = HttpSession(url, key)
    conn = Http(url)
    await asyncio.wait_for(warm.initialize(conn), 60)
    await warm.delete(conn)

    inits = []
    for _ in range(INIT_SAMPLES):
        s = HttpSession(url, key)
        inits.append(await asyncio.wait_for(s.initialize(conn), 60))
        await s.delete(conn)

    s = HttpSession(url, key)
    await asyncio.wait_for(s.initialize(conn), 60)
    conns = [conn] + [Http(url) for _ in range(IN_FLIGHT - 1)]

    async def one(index):
        rid = s.rid()
        check_echo(await s.call(conns[index], echo_message(rid)), rid)

    for _ in range(50):
        await one(0)
    seq = await timed_calls(1, CALL_SECONDS, one)
    par = await timed_calls(IN_FLIGHT, CALL_SECONDS, one)
    await s.delete(conn)
    for c in conns:
        await c.close()
    return {"init_ms": statistics.median(inits) * 1e3, "init_samples_ms": [x * 1e3 for x in inits],
            "seq_per_s": seq, "par_per_s": par}


# --- a stdio MCP client (the floor, and the bridges) ------------------------


class Stdio:
    """A child process spoken to in newline-delimited JSON-RPC."""

    def __init__(self, proc):
        self.proc = proc
        self.waiting = {}
        self.reader = asyncio.ensure_future(self._read())
        self.next_id = 1

    @classmethod
    async def spawn(cls, argv, env, stderr):
        proc = await asyncio.create_subprocess_exec(
            *[str(a) for a in argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=stderr, env=env, limit=1 << 22, start_new_session=True)
        return cls(proc)

    async def _read(self):
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                for fut in self.waiting.values():
                    if not fut.done():
                        fut.set_exception(BenchError("the process closed its stdout"))
                return
            if not line.strip():
                continue
            msg = json.loads(line)
            fut = self.waiting.pop(msg.get("id"), None) if ("result" in msg or "error" in msg) else None
            if fut is not None and not fut.done():
                fut.set_result(msg)

    async def request(self, message):
        fut = asyncio.get_running_loop().create_future()
        self.waiting[message["id"]] = fut
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        await self.proc.stdin.drain()
        return await asyncio.wait_for(fut, 60)

    async def notify(self, message):
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        await self.proc.stdin.drain()

    async def initialize(self):
        reply = await self.request(initialize_message(0))
        if "result" not in reply:
            raise BenchError(f"initialize failed: {reply}")
        await self.notify({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def rid(self):
        self.next_id += 1
        return self.next_id

    async def echo(self, _index=0):
        rid = self.rid()
        check_echo(await self.request(echo_message(rid)), rid)

    async def close(self):
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except asyncio.TimeoutError:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                await asyncio.wait_for(self.proc.wait(), 5)
            except (ProcessLookupError, asyncio.TimeoutError):
                os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        self.reader.cancel()


async def measure_stdio(argv, env, stderr_path, in_flight=True, samples=SPAWN_SAMPLES):
    """Spawn-to-initialize-result (median of samples fresh spawns), then
    echo round trips/s sequential (and IN_FLIGHT in flight), and the peak
    RSS (VmHWM) of the spawned process and its descendants' current RSS."""
    spawns = []
    with open(stderr_path, "ab") as err:
        for _ in range(samples):
            started = time.perf_counter()
            peer = await Stdio.spawn(argv, env, err)
            await asyncio.wait_for(peer.initialize(), 60)
            spawns.append(time.perf_counter() - started)
            await peer.close()

        peer = await Stdio.spawn(argv, env, err)
        await asyncio.wait_for(peer.initialize(), 60)
        for _ in range(50):
            await peer.echo()
        seq = await timed_calls(1, CALL_SECONDS, peer.echo)
        par = await timed_calls(IN_FLIGHT, CALL_SECONDS, peer.echo) if in_flight else None
        hwm = rss_kb(peer.proc.pid, "VmHWM")
        kids = [rss_kb(p) or 0 for p in descendants(peer.proc.pid)]
        await peer.close()
    return {"spawn_init_ms": statistics.median(spawns) * 1e3, "spawn_samples_ms": [x * 1e3 for x in spawns],
            "seq_per_s": seq, "par_per_s": par, "peak_rss_kb": hwm, "children_rss_kb": sum(kids)}


# --- the benchmarks --------------------------------------------------------


ROUNDS = 2


def bench_proxy(results):
    """The upstream is an nginx of its own (a separate process, as it is for
    serve), the key-checking proxy another; both serves (per-worker and
    shared Validator) run at once, and every target is measured ROUNDS
    times in alternating order so that a change in the machine's load
    falls on all of them."""
    run = Run("proxy")
    try:
        up, check = free_port(), free_port()
        upstream_url = f"http://127.0.0.1:{up}/mcp"
        auth, noauth, shared = unique("auth"), unique("noauth"), unique("shared")
        target = f'url = "{upstream_url}"\n'
        serve1, urls, keys, _ = run.serve({auth: target, noauth: target + "shared_key_auth = false\n"})
        serve2, urls2, keys2, _ = run.serve({shared: target}, label="serve-shared", validator="shared")
        key = keys[auth]
        fixed = f"""  server {{
    listen 127.0.0.1:{up};
    location / {{ default_type application/json; return 200 '{FIXED_BODY}'; }}
  }}
"""
        upstream = start_nginx(run, nginx_conf(run, "nginx-upstream", key, fixed, {}), [up])
        checker = start_nginx(run, nginx_conf(run, "nginx-check", key, check_server(check, "fixed"), {"fixed": up}),
                              [check])

        # Whose CPU time a target's requests cost, beside the upstream's:
        # CPU per request does not depend on the machine's load the way
        # requests/s does.
        up_pids = lambda: [upstream.pid] + descendants(upstream.pid)
        check_pids = lambda: [checker.pid] + descendants(checker.pid)
        targets = [
            ("direct", "nginx direct (no proxy)", upstream_url, None, lambda: []),
            ("nginx_check", "nginx key-check proxy", f"http://127.0.0.1:{check}/mcp", key, check_pids),
            ("serve_auth", "thv-actor serve, auth", urls[auth], key, lambda: [serve1.pid]),
            ("serve_noauth", "thv-actor serve, auth off", urls[noauth], None, lambda: [serve1.pid]),
            ("serve_shared", "thv-actor serve, auth, shared Validator", urls2[shared], keys2[shared],
             lambda: [serve2.pid]),
        ]
        rounds = {t[0]: [] for t in targets}
        for r in range(ROUNDS):
            order = targets if r % 2 == 0 else list(reversed(targets))
            for name, label, url, k, pids in order:
                rounds[name].append(measure_wrk(f"{name}-r{r + 1}", label, url, k, pids, up_pids))
        measured = {}
        for name, label, url, *_ in targets:
            runs = rounds[name]
            measured[name] = {
                "label": label, "url": url, "rounds": runs,
                **{f: statistics.mean(x[f] for x in runs)
                   for f in ("rps_c32", "p50_us_c1", "p99_us_c1", "rps_c1", "p99_us_c32", "proxy_cpu_us",
                             "upstream_cpu_us")},
                "load": "/".join(x["load"] for x in runs),
            }
    finally:
        run.close()

    results["proxy"] = measured
    print_proxy(measured)


def measure_wrk(name, label, url, key, proxy_pids, upstream_pids):
    print(f"  wrk {label} ({name}) ...", flush=True)
    wrk(name + "-warmup", url, key, 32, 2, False, seconds=1)
    proxy0, up0 = cpu_seconds(proxy_pids()), cpu_seconds(upstream_pids())
    many = wrk(name, url, key, 32, 2, False)
    proxy_cpu, up_cpu = cpu_seconds(proxy_pids()) - proxy0, cpu_seconds(upstream_pids()) - up0
    one = wrk(name, url, key, 1, 1, True)
    return {"rps_c32": many["rps"], "p50_us_c1": one["p50_us"], "p99_us_c1": one["p99_us"],
            "rps_c1": one["rps"], "p99_us_c32": many["p99_us"], "load": load(),
            "proxy_cpu_us": proxy_cpu / many["requests"] * 1e6, "upstream_cpu_us": up_cpu / many["requests"] * 1e6}


def bench_stdio(results):
    run = Run("stdio")
    try:
        demo = [str(THV), "demo-server"]
        name = unique("demo")
        serve, urls, keys, _ = run.serve({name: f"command = {json.dumps(demo)}\n"})
        key = keys[name]

        sg, mp = free_port(), free_port()
        sg_check, mp_check = free_port(), free_port()
        supergateway = run.spawn("supergateway", [
            NODE_BIN / "supergateway", "--stdio", " ".join(demo), "--outputTransport", "streamableHttp",
            "--stateful", "--port", sg, "--logLevel", "none"])
        mcp_proxy = run.spawn("mcp-proxy", [
            VENV_BIN / "mcp-proxy", "--port", mp, "--host", "127.0.0.1", "--log-level", "WARNING", "--", *demo])
        wait_port(sg, proc=supergateway)
        wait_port(mp, proc=mcp_proxy)
        conf = nginx_conf(run, "nginx-check", key, check_server(sg_check, "sg") + check_server(mp_check, "mp"),
                          {"sg": sg, "mp": mp})
        start_nginx(run, conf, [sg_check, mp_check])

        measured = {}
        print("  stdio floor (driver <-> thv-actor demo-server) ...", flush=True)
        floor = asyncio.run(measure_stdio(demo, run.env, run.logs / "stdio-floor.err.log"))
        floor["load"] = load()
        measured["floor"] = dict(floor, label="floor: demo-server over stdio, no proxy")
        for key_name, label, url in [
            ("serve", "thv-actor serve (key checked)", urls[name]),
            ("supergateway", "supergateway --stateful behind nginx key check", f"http://127.0.0.1:{sg_check}/mcp"),
            ("mcp_proxy", "mcp-proxy server mode behind nginx key check", f"http://127.0.0.1:{mp_check}/mcp"),
            ("supergateway_direct", "supergateway --stateful direct (no key check)", f"http://127.0.0.1:{sg}/mcp"),
            ("mcp_proxy_direct", "mcp-proxy server mode direct (no key check)", f"http://127.0.0.1:{mp}/mcp"),
        ]:
            print(f"  {label} ...", flush=True)
            measured[key_name] = dict(asyncio.run(measure_http(url, key)), label=label, load=load())
    finally:
        run.close()

    results["stdio"] = measured
    print_stdio(measured)


def bench_bridge(results):
    run = Run("bridge")
    try:
        demo = [str(THV), "demo-server"]
        name = unique("demo")
        serve, urls, keys, env = run.serve({name: f"command = {json.dumps(demo)}\n"})
        url, key = urls[name], keys[name]
        peers = [
            ("thv_bridge", "thv-actor bridge", [THV, "bridge", name], env),
            ("mcp_remote", "mcp-remote", [NODE_BIN / "mcp-remote", url, "--header", f"X-ToolHive-Auth:{key}",
                                          "--transport", "http-only", "--silent"], run.env),
            ("mcp_proxy", "mcp-proxy client mode", [VENV_BIN / "mcp-proxy", "--transport", "streamablehttp",
                                                    "-H", "X-ToolHive-Auth", key, "--log-level", "WARNING", url],
             run.env),
        ]
        measured = {}
        for key_name, label, argv, penv in peers:
            print(f"  {label} ...", flush=True)
            r = asyncio.run(measure_stdio(argv, penv, run.logs / f"bridge-{key_name}.err.log", in_flight=False))
            measured[key_name] = dict(r, label=label, load=load())
    finally:
        run.close()

    results["bridge"] = measured
    print_bridge(measured)


def bench_memory(results):
    measured = {}
    for count in (1, 20):
        run = Run(f"memory{count}")
        try:
            demo = json.dumps([str(THV), "demo-server"])
            workloads = {unique(f"m{i}"): f"command = {demo}\n" for i in range(count)}
            serve, urls, keys, _ = run.serve(workloads)
            # Give every warm spare time to start, then let serve settle.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and len(descendants(serve.pid)) < count:
                time.sleep(0.2)
            time.sleep(2)
            kids = descendants(serve.pid)
            measured[f"w{count}"] = {
                "workloads": count,
                "serve_rss_kb": rss_kb(serve.pid),
                "serve_threads": int(next(l.split()[1] for l in Path(f"/proc/{serve.pid}/status").read_text()
                                          .splitlines() if l.startswith("Threads:"))),
                "children": len(kids),
                "children_rss_kb": sum(rss_kb(p) or 0 for p in kids),
                "load": load(),
            }
            run.stop(serve)
        finally:
            run.close()
    results["memory"] = measured
    print_memory(measured)


def bench_peer(results):
    """Two parts. The kernel lookup itself, per new connection, with about
    10 and with 10,000 other loopback sockets open (the ignored benchmark in
    server/tests/peer_identity.rs, built in release). Then requests/s over
    keep-alive connections through serve with the peer check on and off: the
    identity is decided once per connection, so the cost there should be
    noise."""
    measured = {}

    print("  sock_diag lookup cost (cargo test --release, ignored bench) ...", flush=True)
    out = subprocess.run(
        ["cargo", "test", "--release", "--quiet", "-p", "thv-server", "--test", "peer_identity",
         "bench_lookup_cost", "--", "--ignored", "--nocapture"],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    (OUT / "peer-lookup.txt").write_text(out.stdout + out.stderr)
    for line in out.stdout.splitlines():
        if "~10 other sockets" in line:
            measured["lookup_few_us"] = float(line.split(":")[1].split()[0])
        elif "10,000 other sockets" in line:
            measured["lookup_many_us"] = float(line.split(":")[1].split()[0])
    if "lookup_few_us" not in measured:
        raise SystemExit(f"peer lookup bench printed no figures; see {OUT / 'peer-lookup.txt'}")

    run = Run("peer")
    try:
        up = free_port()
        upstream_url = f"http://127.0.0.1:{up}/mcp"
        on, off = unique("peeron"), unique("peeroff")
        target = f'url = "{upstream_url}"\n'
        serve, urls, keys, _ = run.serve({on: target, off: target + "peer_check = false\n"})
        fixed = f"""  server {{
    listen 127.0.0.1:{up};
    location / {{ default_type application/json; return 200 '{FIXED_BODY}'; }}
  }}
"""
        upstream = start_nginx(run, nginx_conf(run, "nginx-upstream", keys[on], fixed, {}), [up])
        up_pids = lambda: [upstream.pid] + descendants(upstream.pid)
        rounds = {on: [], off: []}
        for r in range(ROUNDS):
            for name in ([on, off] if r % 2 == 0 else [off, on]):
                label = "peer check on" if name == on else "peer check off"
                rounds[name].append(measure_wrk(f"{name}-r{r + 1}", label, urls[name], keys[name],
                                                lambda: [serve.pid], up_pids))
        for name, key in ((on, "check_on"), (off, "check_off")):
            measured[key + "_rps"] = statistics.mean(x["rps_c32"] for x in rounds[name])
            measured[key + "_cpu_us"] = statistics.mean(x["proxy_cpu_us"] for x in rounds[name])
    finally:
        run.close()

    results["peer"] = measured
    few, many = measured["lookup_few_us"], measured["lookup_many_us"]
    table("5. Peer check", ["measure", "value"], [
        ["sock_diag lookup per new connection, ~10 other sockets", f"{few:.1f} µs"],
        ["sock_diag lookup per new connection, 10,000 other sockets", f"{many:.1f} µs"],
        ["ratio 10,000 / 10", f"{many / few:.2f}x"],
        ["req/s at 32 keep-alive connections, check on", f"{measured['check_on_rps']:.0f}"],
        ["req/s at 32 keep-alive connections, check off", f"{measured['check_off_rps']:.0f}"],
        ["ratio on / off", f"{measured['check_on_rps'] / measured['check_off_rps']:.3f}x"],
        ["serve CPU per request, on / off",
         f"{measured['check_on_cpu_us']:.1f} / {measured['check_off_cpu_us']:.1f} µs"],
    ])


# --- printing --------------------------------------------------------------


def load():
    return Path("/proc/loadavg").read_text().split()[0]


def table(title, head, rows):
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    line = "  ".join("-" * w for w in widths)
    print(f"\n{title}\n{line}")
    for r in [head] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
        if r is head:
            print(line)
    print(line, flush=True)


def met(ok):
    return "MET" if ok else "NOT MET"


def print_proxy(m):
    rows = [[v["label"], f"{v['rps_c32']:.0f}", f"{v['proxy_cpu_us']:.1f}", f"{v['p50_us_c1']:.0f}",
             f"{v['p99_us_c1']:.0f}", f"{v['rps_c1']:.0f}", v["load"]] for v in m.values()]
    table(f"1. Proxy overhead (wrk POST ping to a fixed nginx upstream; mean of {ROUNDS} rounds)",
          ["target", "req/s c32", "proxy CPU us/req c32", "p50 us c1", "p99 us c1", "req/s c1", "load"], rows)
    d, n, a, o, s = (m[k] for k in ("direct", "nginx_check", "serve_auth", "serve_noauth", "serve_shared"))
    ratio = a["rps_c32"] / n["rps_c32"]
    cost = (1 - a["rps_c32"] / o["rps_c32"]) * 100
    add_n = n["p50_us_c1"] - d["p50_us_c1"]
    add_a = a["p50_us_c1"] - d["p50_us_c1"]
    shared = s["rps_c32"] / a["rps_c32"]
    cpu = a["proxy_cpu_us"] / n["proxy_cpu_us"]
    cpu_auth = a["proxy_cpu_us"] - o["proxy_cpu_us"]
    m["ratios"] = {"serve_auth_over_nginx_check": ratio, "auth_cost_pct": cost, "added_p50_us_nginx": add_n,
                   "added_p50_us_serve": add_a, "shared_over_per_worker": shared,
                   "serve_cpu_over_nginx_cpu": cpu, "auth_cpu_us": cpu_auth}
    table("   ratios and targets", ["figure", "value", "target"], [
        ["serve-auth / nginx-check throughput", f"{ratio:.2f}x", f">= 1.00x: {met(ratio >= 1)}"],
        ["serve auth cost vs auth off", f"{cost:.1f}%", f"< 3%: {met(cost < 3)}"],
        ["added p50 over direct: nginx check", f"{add_n:.0f} us", ""],
        ["added p50 over direct: serve auth", f"{add_a:.0f} us", f"<= nginx's: {met(add_a <= add_n)}"],
        ["shared Validator / per-worker throughput", f"{shared:.2f}x", "(informational)"],
        ["serve-auth / nginx-check CPU per request", f"{cpu:.2f}x", "(load-independent view)"],
        ["auth's CPU per request (auth - auth off)", f"{cpu_auth:.1f} us", "(load-independent view)"],
    ])


def print_stdio(m):
    f = m["floor"]
    rows = [[f["label"], f"{f['spawn_init_ms']:.1f} (spawn)", f"{f['seq_per_s']:.0f}", f"{f['par_per_s']:.0f}",
             f["load"]]]
    for k in ("serve", "supergateway", "mcp_proxy", "supergateway_direct", "mcp_proxy_direct"):
        v = m[k]
        rows.append([v["label"], f"{v['init_ms']:.2f}", f"{v['seq_per_s']:.0f}", f"{v['par_per_s']:.0f}", v["load"]])
    table("2. Hosting a stdio server (thv-actor demo-server, echo tool)",
          ["target", "init ms", "calls/s seq", f"calls/s {IN_FLIGHT} in flight", "load"], rows)
    s, g, p = m["serve"], m["supergateway"], m["mcp_proxy"]
    seq, par = s["seq_per_s"] / g["seq_per_s"], s["par_per_s"] / g["par_per_s"]
    m["ratios"] = {"serve_over_supergateway_seq": seq, "serve_over_supergateway_par": par,
                   "serve_over_mcp_proxy_seq": s["seq_per_s"] / p["seq_per_s"],
                   "serve_over_mcp_proxy_par": s["par_per_s"] / p["par_per_s"],
                   "serve_over_floor_seq": s["seq_per_s"] / f["seq_per_s"]}
    table("   ratios and targets", ["figure", "value", "target"], [
        ["serve / supergateway calls/s, sequential", f"{seq:.2f}x", f">= 2x: {met(seq >= 2)}"],
        [f"serve / supergateway calls/s, {IN_FLIGHT} in flight", f"{par:.2f}x", f">= 2x: {met(par >= 2)}"],
        ["serve / mcp-proxy calls/s, sequential", f"{m['ratios']['serve_over_mcp_proxy_seq']:.2f}x", ""],
        [f"serve / mcp-proxy calls/s, {IN_FLIGHT} in flight", f"{m['ratios']['serve_over_mcp_proxy_par']:.2f}x", ""],
        ["serve / floor calls/s, sequential", f"{m['ratios']['serve_over_floor_seq']:.2f}x", "(the floor is the ceiling)"],
        ["serve initialize", f"{s['init_ms']:.2f} ms", f"< 10 ms: {met(s['init_ms'] < 10)}"],
    ])


def print_bridge(m):
    rows = [[v["label"], f"{v['spawn_init_ms']:.1f}", f"{v['seq_per_s']:.0f}", f"{v['peak_rss_kb'] / 1024:.1f}",
             f"{v['children_rss_kb'] / 1024:.1f}", v["load"]] for v in m.values()]
    table("3. The bridge (stdio -> serve demo workload with key)",
          ["bridge", "spawn->init ms", "round trips/s", "peak RSS MB", "children RSS MB", "load"], rows)
    b, r, p = m["thv_bridge"], m["mcp_remote"], m["mcp_proxy"]
    start = b["spawn_init_ms"] / r["spawn_init_ms"]
    trips = b["seq_per_s"] / r["seq_per_s"]
    mb = b["peak_rss_kb"] / 1024
    m["ratios"] = {"start_over_mcp_remote": start, "round_trips_over_mcp_remote": trips,
                   "start_over_mcp_proxy": b["spawn_init_ms"] / p["spawn_init_ms"],
                   "round_trips_over_mcp_proxy": b["seq_per_s"] / p["seq_per_s"]}
    table("   ratios and targets", ["figure", "value", "target"], [
        ["bridge start / mcp-remote start", f"{start:.3f}", f"<= 0.1: {met(start <= 0.1)}"],
        ["bridge peak RSS", f"{mb:.1f} MB", f"< 10 MB: {met(mb < 10)}"],
        ["bridge / mcp-remote round trips/s", f"{trips:.2f}x", f">= 2x: {met(trips >= 2)}"],
        ["bridge start / mcp-proxy start", f"{m['ratios']['start_over_mcp_proxy']:.3f}", ""],
        ["bridge / mcp-proxy round trips/s", f"{m['ratios']['round_trips_over_mcp_proxy']:.2f}x", ""],
    ])


def print_memory(m):
    rows = [[v["workloads"], f"{v['serve_rss_kb'] / 1024:.1f}", v["serve_threads"], v["children"],
             f"{v['children_rss_kb'] / 1024:.1f}", v["load"]] for v in m.values()]
    table("4. Memory (serve idle, command workloads of the demo)",
          ["workloads", "serve RSS MB", "serve threads", "children", "children RSS MB", "load"], rows)


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())

    def version(argv, pattern=r"(\S+)"):
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            m = re.search(pattern, p.stdout + p.stderr)
            return m.group(1) if m else "?"
        except OSError:
            return "missing"

    def npm_version(pkg):
        try:
            return json.loads((BENCH / "node" / "node_modules" / pkg / "package.json").read_text())["version"]
        except OSError:
            return "missing"

    return {
        "cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
        "thv_actor": version([THV, "--version"], r"thv-actor (\S+)"),
        "nginx": version(["nginx", "-v"], r"nginx/(\S+)"),
        "wrk": version(["wrk", "-v"], r"wrk (\S+)"),
        "node": version(["node", "--version"]),
        "python": platform.python_version(),
        "supergateway": npm_version("supergateway"),
        "mcp_remote": npm_version("mcp-remote"),
        "mcp_proxy": version([VENV_BIN / "mcp-proxy", "--version"], r"(\d+\.\d+\.\d+)"),
        "load_at_start": Path("/proc/loadavg").read_text().strip(),
    }


def main():
    parser = argparse.ArgumentParser(description="thv-actor benchmarks")
    parser.add_argument("benches", nargs="*", help=f"which to run: {', '.join(BENCHES)} (default: all)")
    args = parser.parse_args()
    unknown = [b for b in args.benches if b not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)} (choose from {', '.join(BENCHES)})")
    chosen = args.benches or BENCHES

    OUT.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "seconds": SECONDS, "call_seconds": CALL_SECONDS}
    mach = results["machine"]
    print("machine: " + ", ".join(f"{k}={v}" for k, v in mach.items()), flush=True)

    failed = []
    for name in chosen:
        print(f"\n== {name} ==", flush=True)
        started = time.monotonic()
        try:
            globals()[f"bench_{name}"](results)
        except BenchError as err:
            failed.append(name)
            results[name] = {"error": str(err)}
            print(f"  {name}: FAILED: {err}", flush=True)
        print(f"  ({time.monotonic() - started:.0f} s)", flush=True)

    results["load_at_end"] = Path("/proc/loadavg").read_text().strip()
    path = OUT / f"results-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    shutil.copyfile(path, OUT / "results.json")
    print(f"\nraw results: {path.relative_to(REPO)}; load at end: {results['load_at_end']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
