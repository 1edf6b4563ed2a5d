"""Pull agents at fleet scale: what 1000 cron-driven agents ask of one git daemon.

    cd /work/main && .venv/bin/python bench/fleet_pull.py [--agents 1000] [--splays 0,60,300] \
        [--real 20] [--concurrency 0]

One git daemon (lab.gitserver's, the git:// scheme, with --verbose and its defaults: at most
32 connections served at once, a listen backlog of 5) serves a bare repository holding what
bench/nochange_cycle.py builds: tests/cases/base, the project's ansible.cfg and
inventories/dev with two `platform: local` targets. Everything is on loopback.

1. The real no-change path. --real state directories are each converged once, unmeasured,
   by `gitops-ansible run --repo git://... --env dev --state-dir S_i`; then each runs one
   no-change cycle (exit 3), measured: wall, CPU and peak RSS of its process tree
   (common.measure). The real agents reach the daemon through a TCP relay in this script
   that keeps what every connection carried each way. The daemon's log counts the
   connections and upload-pack requests it served; its CPU is read from /proc/PID/stat
   before and after (its own and that of the children it reaped: `git daemon --serve` and
   `git upload-pack`, one of each per connection). After the fleet, a new commit lands and
   5 of the real agents fetch and converge it: connections, bytes and daemon CPU per agent.
2. The fleet: --agents agents per splay, each firing its cycle once at a moment drawn
   uniformly from 0..splay (cron fires every host at the same minute; `--splay N` sleeps
   0..N s before the cycle asks Git anything). 1000 Python processes on this 2-core machine
   would measure the client machine, not the server. So a simulated agent sends the daemon
   exactly what a real no-change cycle sent it: the bytes of the one connection the relay
   carried for it (`git ls-remote`: protocol v2's ls-refs), over one connection of its own,
   from an address of its own (127.1.x.y: git daemon treats the connections of one address
   as one client's when it is over its limit), giving up after an agent's git_timeout (60 s)
   as the real cycle's `git ls-remote` would. The run stops unless every real no-change
   cycle made exactly one connection, all with the same request; unless the daemon logged
   one upload-pack request per connection, and one connection per agent whenever every
   agent was answered. An agent without the real cycles' answer, byte for byte, failed and
   is counted. No limit on how many agents talk to the daemon at once (--concurrency N sets
   one: agents then queue in this script, as behind a connection limit in front of the
   daemon). Latency: from an agent's scheduled moment to its whole answer.
Printed per splay: the daemon's connections per second over time (buckets of splay/12 s, 1 s
at splay 0; seconds with nothing left out), their peak and median per second, latency
p50/p95, failures, the daemon's CPU; then the sizing figures. Written to
bench/results/fleet_pull.json. At the defaults the run takes ~10 minutes (the splays
themselves are 360 s; a herd that the daemon cannot take lasts up to git_timeout).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from agent import commit, cpu_seconds
from common import RESULTS, VENV_BIN, bench_env, expect, measure
from nochange_cycle import build_repo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gitops_ansible.config import SCHEMA  # noqa: E402
from lab.gitserver import GitServers, git  # noqa: E402
from lab.hosts import _processes  # noqa: E402 (the lab's one walk of /proc)
from lab.system import free_port, wait_port  # noqa: E402

COMMIT_AGENTS = 5  # real agents that fetch and converge the new commit
GIT_TIMEOUT = SCHEMA["git_timeout"].default  # what an agent allows its ls-remote
LOG_KINDS = {"Connection from": "connect", "Request upload-pack": "request",
             "Disconnected": "gone", "Too many children": "dropped"}


class DaemonLog:
    """The git daemon's --verbose log, read as it is written: when each line came, by kind."""

    def __init__(self, stream):
        self.events: list[tuple[float, str]] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            kind = next((k for text, k in LOG_KINDS.items() if text in line), None)
            if kind:
                self.events.append((time.monotonic(), kind))

    def since(self, mark: int, kind: str) -> list[float]:
        return [t for t, k in self.events[mark:] if k == kind]


class LoggedServers(GitServers):
    """lab's GitServers whose git daemon logs each connection (--verbose) to a pipe read here."""

    def start_daemon(self) -> None:
        self.daemon_port = self.daemon_port or free_port()
        self._daemon = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--export-all", "--verbose",
             f"--base-path={self.repos}", "--listen=127.0.0.1", f"--port={self.daemon_port}",
             str(self.repos)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log = DaemonLog(self._daemon.stderr)
        wait_port(self.daemon_port)
        # `git daemon` runs git-daemon as its child: the accept loop, which reaps the
        # children serving the connections (their CPU lands in its cutime/cstime)
        self.pids = [self._daemon.pid, *(pid for pid, ppid, _ in _processes()
                                         if ppid == self._daemon.pid)]

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)


class Relay:
    """A TCP relay in front of the daemon for the real agents: what each connection carried
    (request, answer), in the order the connections ended."""

    def __init__(self, upstream: int):
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[tuple[bytes, bytes]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._carry, args=(client,), daemon=True).start()

    def _carry(self, client: socket.socket) -> None:
        request, answer = [], []
        with client, socket.create_connection(("127.0.0.1", self.upstream)) as server:
            back = threading.Thread(target=_pump, args=(server, client, answer))
            back.start()
            _pump(client, server, request)
            back.join()
        self.connections.append((b"".join(request), b"".join(answer)))

    def close(self) -> None:
        self.listener.close()


def _pump(source: socket.socket, sink: socket.socket, kept: list) -> None:
    try:
        while data := source.recv(65536):
            kept.append(data)
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:  # the other side went first
        pass


def wait_for(what: str, done, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.02)


def pct(values, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@dataclass
class Server:
    """What the server did during a phase: read from the daemon's log and /proc."""
    connections: int
    requests: int
    dropped: int
    cpu_s: float
    arrivals: list[float]


def server_phase(servers: LoggedServers, run) -> Server:
    """Run RUN() and return what the daemon did meanwhile: counted once its log has been
    quiet for a second and it has reaped every connection (a child's CPU counts in the
    daemon's from then on)."""
    log, mark, cpu0 = servers.log, len(servers.log.events), servers.cpu()
    run()
    wait_for("the daemon to go quiet and reap its connections", lambda: (
        time.monotonic() - log.events[-1][0] > 1 and len(log.since(mark, "gone"))
        >= len(log.since(mark, "connect"))), timeout=GIT_TIMEOUT * 3)
    return Server(len(log.since(mark, "connect")), len(log.since(mark, "request")),
                  len(log.since(mark, "dropped")), servers.cpu() - cpu0,
                  log.since(mark, "connect"))


class RealAgents:
    """--real gitops-ansible agents, each with its own state directory, reaching the daemon
    through the relay."""

    def __init__(self, servers: LoggedServers, relay: Relay, tmp: Path, count: int):
        self.servers, self.relay = servers, relay
        self.env, self.cwd = bench_env(tmp), tmp / "cwd"
        self.cwd.mkdir()
        self.argv = [VENV_BIN / "gitops-ansible", "run", "--repo",
                     f"git://127.0.0.1:{relay.port}/estate.git", "--env", "dev"]
        self.states = [tmp / f"state{i}" for i in range(count)]

    def cycles(self, count: int, codes, text: str) -> dict:
        """The first COUNT agents' cycles, one after another: each one's cost, and the
        daemon's per cycle, with what each connection carried."""
        samples, first = [], len(self.relay.connections)
        server = server_phase(self.servers, lambda: samples.extend(
            expect(f"run {state.name}", measure([*self.argv, "--state-dir", state], self.cwd,
                                                self.env), codes, text)
            for state in self.states[:count]))
        wait_for("the relay", lambda: len(self.relay.connections) - first == server.connections)
        carried = self.relay.connections[first:]
        return {"cycles": count, "wall_median_s": statistics.median(s.wall for s in samples),
                "cpu_median_s": statistics.median(s.cpu for s in samples),
                "peak_rss_mib": max(s.rss_mib for s in samples),
                "connections_per_cycle": server.connections / count,
                "upload_pack_requests_per_cycle": server.requests / count,
                "bytes_up_per_cycle": sum(len(r) for r, _ in carried) / count,
                "bytes_down_per_cycle": sum(len(a) for _, a in carried) / count,
                "server_cpu_ms_per_cycle": server.cpu_s / count * 1000, "carried": carried}


def show_real(label: str, row: dict) -> None:
    print(f"{label}, {row['cycles']} real agents: wall median {row['wall_median_s']:.3f} s, "
          f"CPU {row['cpu_median_s']:.3f} s, peak RSS {row['peak_rss_mib']:.1f} MiB; at the "
          f"daemon per cycle: connections {row['connections_per_cycle']:g}, upload-pack "
          f"requests {row['upload_pack_requests_per_cycle']:g}, "
          f"{row['bytes_up_per_cycle']:.0f} B up, {row['bytes_down_per_cycle']:.0f} B down, "
          f"{row['server_cpu_ms_per_cycle']:.1f} ms CPU")


def replayed(nochange: dict, relay_port: int, daemon_port: int) -> tuple[bytes, bytes]:
    """The one request of a no-change cycle, as sent straight to the daemon, and its answer."""
    requests = {r for r, _ in nochange["carried"]}
    if nochange["connections_per_cycle"] != 1 or len(requests) != 1:
        sys.exit(f"a no-change cycle made {nochange['connections_per_cycle']:g} connections, "
                 f"with {len(requests)} different requests: the fleet replays one per agent")
    return retarget(requests.pop(), relay_port, daemon_port), nochange["carried"][0][1]


def retarget(request: bytes, old_port: int, new_port: int) -> bytes:
    """The request as sent to NEW_PORT: its first pkt-line names the host:port it was sent
    to (git://'s host= attribute); the rest is unchanged."""
    size = int(request[:4], 16)
    old, new = f"host=127.0.0.1:{old_port}\0".encode(), f"host=127.0.0.1:{new_port}\0".encode()
    first = request[4:size]
    if old not in first:
        sys.exit(f"no {old!r} in the captured request {request[:size]!r}")
    first = first.replace(old, new)
    return b"%04x" % (len(first) + 4) + first + request[size:]


@dataclass
class Request:
    at: float          # scheduled moment, s after the fleet's start
    started: float     # when it took its slot and began to connect
    done: float        # the whole answer read, or the agent gave up
    ok: bool           # the answer the real cycles got, byte for byte
    error: str | None  # why not
    up: int
    down: int


def source_address(agent: int) -> str:
    """An agent's own address, as every host of a fleet has one: git daemon handles
    connections over its --max-connections by address (it kills one of an address that has
    two), so all agents on 127.0.0.1 would be treated as one host."""
    return f"127.1.{agent // 250}.{agent % 250 + 1}"


async def _agent(agent, at, t0, request, answer, port, slots) -> Request:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, t0 + at - loop.time()))
    async with slots:
        started, got, error = loop.time(), b"", None
        try:
            async with asyncio.timeout(GIT_TIMEOUT):
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, local_addr=(source_address(agent), 0))
                writer.write(request)
                got = await reader.read()
                writer.close()
                await writer.wait_closed()
        except TimeoutError:
            error = f"no answer within git_timeout ({GIT_TIMEOUT} s)"
        except OSError as exc:
            error = type(exc).__name__
    if error is None and got != answer:
        error = f"{len(got)} bytes unlike the real answer"
    return Request(at, started - t0, loop.time() - t0, error is None, error, len(request),
                   len(got))


async def _fleet(offsets, request, answer, port, concurrency) -> tuple[float, list[Request]]:
    slots = asyncio.Semaphore(concurrency or len(offsets))
    t0 = asyncio.get_running_loop().time() + 0.5
    return t0, await asyncio.gather(*(_agent(i, at, t0, request, answer, port, slots)
                                      for i, at in enumerate(offsets)))


def fleet(servers, splay: int, agents: int, request, answer, concurrency) -> dict:
    """One cron period of AGENTS agents with SPLAY: each makes the one connection a
    no-change cycle makes, at its moment, and gives up after an agent's git_timeout. The
    daemon must have logged one upload-pack request per connection and no more connections
    than agents (as many when every agent got its answer); an agent without the real
    cycles' answer, byte for byte, failed, and is counted."""
    moments = random.Random(f"fleet-{splay}")  # the same schedule on every run
    offsets = sorted(moments.uniform(0, splay) for _ in range(agents))
    found = {}
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    server = server_phase(servers, lambda: found.update(
        zip(("t0", "requests"), asyncio.run(_fleet(offsets, request, answer,
                                                   servers.daemon_port, concurrency)))))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    answered = sum(r.ok for r in found["requests"])
    if (server.requests != server.connections or server.connections > agents
            or server.connections < answered or answered == agents != server.connections):
        sys.exit(f"splay {splay}: {server.connections} connections and {server.requests} "
                 f"upload-pack requests at the daemon for {agents} agents, {answered} "
                 "answered (one connection and request per agent expected)")
    return summarize(splay, found["requests"], [t - found["t0"] for t in server.arrivals],
                     server, cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime)


def latency_ms(r: Request) -> float:
    """From the agent's scheduled moment to the whole answer: what the agent waits."""
    return (r.done - r.at) * 1000


def per_second(requests: list[Request], arrivals: list[float]) -> list[dict]:
    seconds = int(max(max(r.done for r in requests), max(arrivals, default=0))) + 1
    rows = [{"s": s, "server": 0, "started": 0, "answered": 0, "failed": 0, "latency_ms": []}
            for s in range(seconds)]
    for t in arrivals:
        rows[max(0, int(t))]["server"] += 1
    for r in requests:
        rows[max(0, int(r.started))]["started"] += 1
        rows[int(r.done)]["answered" if r.ok else "failed"] += 1
        if r.ok:
            rows[int(r.done)]["latency_ms"].append(latency_ms(r))
    for row in rows:
        latencies = row.pop("latency_ms")
        row["latency_p50_ms"] = round(statistics.median(latencies), 1) if latencies else None
    return rows


def summarize(splay, requests, arrivals, server: Server, client_cpu) -> dict:
    rows = per_second(requests, arrivals)
    busy = [row["server"] for row in rows[:int(max(arrivals, default=0)) + 1]]
    answered = [r for r in requests if r.ok]
    latency = [latency_ms(r) for r in answered]
    errors = {}
    for r in requests:
        if r.error:
            errors[r.error] = errors.get(r.error, 0) + 1
    return {"splay_s": splay, "agents": len(requests), "answered": len(answered),
            "failed": errors, "dropped_by_daemon": server.dropped,
            "last_answer_s": max(r.done for r in requests),
            "server_per_s": {"peak": max(busy), "median": statistics.median(busy),
                             "mean": len(arrivals) / len(busy)},
            "latency_ms": {"p50": pct(latency, 0.5), "p95": pct(latency, 0.95),
                           "max": max(latency, default=float("nan"))},
            "service_ms": {q: pct([(r.done - r.started) * 1000 for r in answered], v)
                           for q, v in (("p50", 0.5), ("p95", 0.95))},
            "server_cpu_s": server.cpu_s,
            "server_cpu_ms_per_connection": server.cpu_s / max(1, server.connections) * 1000,
            "client_cpu_s": client_cpu,
            "bytes_up": sum(r.up for r in requests), "bytes_down": sum(r.down for r in requests),
            "buckets": buckets(splay, answered, rows), "per_second": rows}


def buckets(splay: int, answered: list[Request], rows: list[dict]) -> list[dict]:
    """The per-second rows in buckets of splay/12 s (1 s at splay 0); the latency of the
    agents scheduled in the bucket."""
    width = max(1, splay // 12)
    out = []
    for start in range(0, len(rows), width):
        chunk = rows[start:start + width]
        latency = [latency_ms(r) for r in answered if start <= r.at < start + width]
        out.append({"from_s": start, "to_s": start + len(chunk),
                    "server": sum(row["server"] for row in chunk),
                    "peak_per_s": max(row["server"] for row in chunk),
                    "failed": sum(row["failed"] for row in chunk),
                    "latency_p50_ms": pct(latency, 0.5) if latency else None,
                    "latency_p95_ms": pct(latency, 0.95) if latency else None})
    return out


def show(result: dict) -> None:
    rate, lat = result["server_per_s"], result["latency_ms"]
    failed = sum(result["failed"].values())
    print(f"\nsplay {result['splay_s']} s, {result['agents']} agents: answered "
          f"{result['answered']}, failed {failed} {result['failed'] or ''} (daemon dropped "
          f"{result['dropped_by_daemon']}); daemon requests/s peak {rate['peak']}, median "
          f"{rate['median']:g}, mean {rate['mean']:.1f}; latency p50 {lat['p50']:.0f} ms, p95 "
          f"{lat['p95']:.0f} ms, max {lat['max']:.0f} ms; daemon CPU "
          f"{result['server_cpu_s']:.2f} s ({result['server_cpu_ms_per_connection']:.1f} ms "
          f"per connection); client CPU {result['client_cpu_s']:.2f} s; last answer at "
          f"{result['last_answer_s']:.1f} s")
    print(f"  {'SECONDS':>9} {'AT DAEMON':>9} {'PER S':>6} {'PEAK/S':>6} {'FAILED':>6} "
          f"{'P50 ms':>7} {'P95 ms':>7}")
    for b in (b for b in result["buckets"] if b["server"] or b["failed"]):
        p50, p95 = ("-" if b[k] is None else f"{b[k]:.0f}"
                    for k in ("latency_p50_ms", "latency_p95_ms"))
        print(f"  {b['from_s']:>4}-{b['to_s']:<4} {b['server']:>9} "
              f"{b['server'] / (b['to_s'] - b['from_s']):>6.1f} {b['peak_per_s']:>6} "
              f"{b['failed']:>6} {p50:>7} {p95:>7}")


def sizing(nochange: dict, new_commit: dict, fleets: list[dict]) -> dict:
    """The figures an operator sizes the Git server with. A cost in ms per agent is, for
    1000 agents, the same number in seconds."""
    per_fleet = statistics.median(f["server_cpu_ms_per_connection"] for f in fleets)
    return {
        "a no-change cycle at the daemon": f"connections "
        f"{nochange['connections_per_cycle']:g}, {nochange['bytes_up_per_cycle']:.0f} B up, "
        f"{nochange['bytes_down_per_cycle']:.0f} B down; daemon CPU "
        f"{nochange['server_cpu_ms_per_cycle']:.1f} ms (real cycles), {per_fleet:.1f} ms "
        "(fleet, median over the splays)",
        "1000 agents, one cron period": f"{per_fleet:.1f} s daemon CPU, "
        f"{nochange['bytes_down_per_cycle'] * 1000 / 2**20:.2f} MiB down",
        "a new commit, per agent": f"connections {new_commit['connections_per_cycle']:g}, "
        f"{new_commit['bytes_down_per_cycle'] / 1024:.1f} KiB down, "
        f"{new_commit['server_cpu_ms_per_cycle']:.1f} ms daemon CPU (1000 agents: "
        f"{new_commit['server_cpu_ms_per_cycle']:.1f} s)",
        **{f"splay {f['splay_s']} s, {f['agents']} agents": f"peak "
           f"{f['server_per_s']['peak']} requests/s, median {f['server_per_s']['median']:g}/s,"
           f" mean {f['server_per_s']['mean']:.1f}/s; latency p50 {f['latency_ms']['p50']:.0f}"
           f" ms, p95 {f['latency_ms']['p95']:.0f} ms; "
           f"{f['agents'] - f['answered']} failed" for f in fleets}}


def publish(nochange, new_commit, fleets, args, commands, load_start) -> None:
    summary = sizing(nochange, new_commit, fleets)
    print("\nsizing:")
    for label, text in summary.items():
        print(f"  {label}: {text}")
    peak0 = next((f["server_per_s"]["peak"] for f in fleets if f["splay_s"] == 0), None)
    print(f"RESULT name=fleet_pull server_cpu_ms_per_nochange="
          f"{nochange['server_cpu_ms_per_cycle']:.1f} peak_per_s_splay0={peak0} "
          "goal=report-only met=yes")
    for row in (nochange, new_commit):
        row.pop("carried")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fleet_pull.json").write_text(json.dumps({
        "name": "fleet_pull", "agents": args.agents, "concurrency": args.concurrency,
        "real_nochange": nochange, "real_new_commit": new_commit, "fleet": fleets,
        "sizing": summary, "commands": commands, "loadavg_at_start": load_start,
        "loadavg_at_end": os.getloadavg(), "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2) + "\n")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=1000, help="simulated agents per splay")
    parser.add_argument("--splays", default="0,60,300", help="splays in seconds, comma separated")
    parser.add_argument("--real", type=int, default=20, help="real gitops-ansible agents")
    parser.add_argument("--concurrency", type=int, default=0,
                        help="simulated agents talking to the daemon at once (0: no limit)")
    args = parser.parse_args()
    args.splays = [int(s) for s in args.splays.split(",")]
    if args.real < COMMIT_AGENTS:
        parser.error(f"--real: at least {COMMIT_AGENTS}")
    return args


def bench(args, tmp: Path, servers: LoggedServers, relay: Relay):
    work, out = tmp / "work", tmp / "out"
    out.mkdir()
    build_repo(work, out)
    bare = servers.create("estate")
    git("push", "-q", str(bare), "HEAD:main", cwd=work)
    agents = RealAgents(servers, relay, tmp, args.real)
    print(f"converging {args.real} real agents (unmeasured)", file=sys.stderr, flush=True)
    agents.cycles(args.real, (0, 2), "alpha")
    nochange = agents.cycles(args.real, (3,), "nothing to do")
    show_real("no-change cycle", nochange)
    request, answer = replayed(nochange, relay.port, servers.daemon_port)
    fleets = []
    for splay in args.splays:
        print(f"fleet: {args.agents} agents, splay {splay} s", file=sys.stderr, flush=True)
        fleets.append(fleet(servers, splay, args.agents, request, answer, args.concurrency))
        show(fleets[-1])
    # Last: the fleet replays the answer of the revision before it.
    commit(work, "fleet")
    git("push", "-q", str(bare), "HEAD:main", cwd=work)
    new_commit = agents.cycles(COMMIT_AGENTS, (0, 2), "beta")
    show_real("\na new commit fetched and converged", new_commit)
    return nochange, new_commit, fleets, agents.argv


def main() -> None:
    args = parse_args()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="gatbench-fleet-") as tmp:
        servers = LoggedServers(Path(tmp) / "git")
        servers.start(ssh=False, https=False)
        relay = Relay(servers.daemon_port)
        try:
            nochange, new_commit, fleets, argv = bench(args, Path(tmp), servers, relay)
        finally:
            relay.close()
            servers.stop()
    publish(nochange, new_commit, fleets, args,
            {"real agent": [str(a) for a in argv] + ["--state-dir", "TMP/stateN"],
             "fleet agent": "one connection to the daemon replaying the real no-change "
                            "cycle's request (git ls-remote, protocol v2 ls-refs)"},
            load_start)


if __name__ == "__main__":
    main()
