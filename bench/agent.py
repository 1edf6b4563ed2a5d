"""The agent: latency from `git push` to converged targets, and what it costs while idle.

    cd /work/main && .venv/bin/python bench/agent.py [--repeat N] [--polls M] [--idle SECONDS]

A local repository holds tests/cases/base with two `platform: local` targets (the same as
bench/nochange_cycle.py). One agent process runs with the default interval and jitter
(config.SOURCE_SCHEMA: 120 s + 0..10 s) and a GitHub webhook receiver.

1. Latency, per commit, from `git commit` (the push into the served repository) to the
   targets' files carrying the new content:
   - webhook: a signed GitHub push event is posted right after the commit (N commits);
   - polling: no webhook; the agent finds the commit on its next interval (M commits, each
     committed at a random moment of the interval, so the wait is ~half an interval);
   - the baseline, round by round with the webhook (alternating which goes first):
     `ansible-playbook` alone, started by hand in a clone at a new commit of its own, with
     the agent's arguments (`--diff`, as the agent records diffs by default, and the changed
     host as the limit), timed to the same file; and once more without `--diff`, for what
     Ansible's diff costs. The webhook's figure over the first is the agent's share.
     `--no-diff`: the source turns diffs off (`diff = false`) and the baseline runs
     without `--diff` too.
2. Idle cost, at the default interval: the agent's CPU time (its own and its children's:
   `git ls-remote` per cycle) over --idle seconds, scaled to an hour, and its resident
   memory (RSS, and its private and shared-library parts); against cron + `ansible-pull
   --only-if-changed` at the same interval: the CPU time of one no-change run (median of N,
   measured here) times the runs per hour, and its peak RSS.
The RESULT ratio is agent CPU per hour / cron + ansible-pull CPU per hour.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import RESULTS, VENV_BIN, bench_env, expect, measure
from nochange_cycle import build_repo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gitops_ansible.config import SOURCE_SCHEMA  # noqa: E402
from lab.system import free_port  # noqa: E402

SECRET = "bench-secret"
INTERVAL = SOURCE_SCHEMA["interval"].default
JITTER = SOURCE_SCHEMA["jitter"].default


def commit(repo: Path, name: str) -> None:
    (repo / "inventories/dev/host_vars").mkdir(exist_ok=True)
    (repo / "inventories/dev/host_vars/beta.yml").write_text(f"---\ngreet_name: {name}\n")
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run(git + ["add", "-A"], cwd=repo, check=True)
    subprocess.run(git + ["commit", "-qm", f"greet {name}"], cwd=repo, check=True)


def webhook(port: int) -> None:
    body = json.dumps({"ref": "refs/heads/master", "repository": {"full_name": "repo"}}).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/hooks/github", data=body,
                                     headers={"X-GitHub-Event": "push",
                                              "X-Hub-Signature-256": signature})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202, response.status


def ansible_alone(clone: Path, out: Path, name: str, env: dict, diff: bool) -> float:
    """Seconds from starting `ansible-playbook` on a new commit in CLONE to beta's file
    carrying it (the agent's webhook figure, without the agent)."""
    commit(clone, name)
    command = [VENV_BIN / "ansible-playbook", *(["--diff"] if diff else []), "-i",
               "inventories/dev", "--limit", "beta", "playbooks/site.yml"]
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=clone, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_greeting(out, name, 300)
    took = time.perf_counter() - start
    if proc.wait():
        sys.exit(f"ansible-playbook in {clone} ended with {proc.returncode}")
    return took


def wait_greeting(out: Path, name: str, timeout: float) -> None:
    deadline, path = time.monotonic() + timeout, out / "beta.txt"
    while time.monotonic() < deadline:
        if path.exists() and path.read_text() == f"hello {name}\n":
            return
        time.sleep(0.05)
    sys.exit(f"beta was not converged to {name!r} within {timeout}s")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int) -> dict:
    """The resident memory of PID split as smaps_rollup does: private (its own heap, stacks
    and written pages) and shared clean (library code, e.g. libpython and libcrypto, which
    every process mapping the library shares)."""
    kib = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        kib[key] = int(value.split()[0])
    return {"rss": kib["Rss"] / 1024, "pss": kib["Pss"] / 1024,
            "private": (kib["Private_Clean"] + kib["Private_Dirty"]) / 1024,
            "shared_clean": kib["Shared_Clean"] / 1024}


def main() -> None:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5,
                        help="webhook commits and ansible-pull runs")
    parser.add_argument("--polls", type=int, default=3, help="commits found by polling")
    parser.add_argument("--idle", type=float, default=2 * INTERVAL, help="idle seconds measured")
    parser.add_argument("--no-diff", action="store_true",
                        help="the source records no diffs (diff = false); nor does the baseline")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gatbench-agent-") as tmp:
        tmp = Path(tmp)
        repo, out, cwd = tmp / "repo", tmp / "out", tmp / "cwd"
        out.mkdir()
        cwd.mkdir()
        build_repo(repo, out)
        env = bench_env(tmp)
        (tmp / "secret").write_text(SECRET)
        port = free_port()
        config = tmp / "agent.toml"
        config.write_text(f'[agent]\nlisten = "127.0.0.1:{port}"\n'
                          f'github_secret_file = "{tmp / "secret"}"\n'
                          f'[[sources]]\nrepo = "file://{repo}"\nref = "master"\nenv = "dev"\n'
                          'drift_interval = 0\n' + ("diff = false\n" if args.no_diff else ""))
        subprocess.run(["git", "branch", "-M", "master"], cwd=repo, check=True)
        clone = tmp / "alone"
        subprocess.run(["git", "clone", "-q", repo, clone], check=True)
        log = open(tmp / "agent.log", "w")
        agent = subprocess.Popen([VENV_BIN / "gitops-ansible", "agent", "--config", config,
                                  "--state-dir", tmp / "state"], env=env, cwd=cwd, stdout=log,
                                 stderr=subprocess.STDOUT)
        try:
            wait_greeting(out, "world", 300)
            time.sleep(2)
            webhook_s, polling_s, alone_s, alone_nodiff_s = [], [], [], []
            for i in range(args.repeat):
                if i % 2:
                    alone_s.append(ansible_alone(clone, out, f"alone{i}", env, not args.no_diff))
                commit(repo, f"hook{i}")
                start = time.perf_counter()
                webhook(port)
                wait_greeting(out, f"hook{i}", 300)
                webhook_s.append(time.perf_counter() - start)
                if not i % 2:
                    alone_s.append(ansible_alone(clone, out, f"alone{i}", env, not args.no_diff))
                said = f"  webhook {i}: {webhook_s[-1]:.2f} s; ansible-playbook alone " \
                    f"{alone_s[-1]:.2f} s"
                if not args.no_diff:
                    alone_nodiff_s.append(ansible_alone(clone, out, f"nodiff{i}", env, False))
                    said += f", without --diff {alone_nodiff_s[-1]:.2f} s"
                print(said, file=sys.stderr, flush=True)
            for i in range(args.polls):
                time.sleep(random.uniform(0, INTERVAL))
                commit(repo, f"poll{i}")
                start = time.perf_counter()
                wait_greeting(out, f"poll{i}", INTERVAL + JITTER + 300)
                polling_s.append(time.perf_counter() - start)
                print(f"  polling {i}: {polling_s[-1]:.2f} s", file=sys.stderr, flush=True)
            time.sleep(5)  # let the last converge's record settle
            cpu0, t0 = cpu_seconds(agent.pid), time.monotonic()
            time.sleep(args.idle)
            idle_cpu = cpu_seconds(agent.pid) - cpu0
            idle_wall = time.monotonic() - t0
            agent_memory = memory_mib(agent.pid)
            agent_rss = agent_memory["rss"]
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(60)
            log.close()
        pull = [VENV_BIN / "ansible-pull", "-U", f"file://{repo}", "-C", "master",
                "-d", tmp / "pull", "-i", "inventories/dev", "--only-if-changed", "--limit",
                "all", "playbooks/site.yml"]
        expect("ansible-pull (first converge)", measure(pull, cwd, env), (0,), "beta")
        pulls = [expect("ansible-pull", measure(pull, cwd, env), (0,),
                        "Repository has not changed") for _ in range(args.repeat)]
    per_hour = 3600 / (INTERVAL + JITTER / 2)
    agent_cpu_hour = idle_cpu / idle_wall * 3600
    pull_cpu_hour = statistics.median(s.cpu for s in pulls) * per_hour
    ratio = agent_cpu_hour / pull_cpu_hour
    webhook_median, alone_median = statistics.median(webhook_s), statistics.median(alone_s)
    result = {
        "latency_webhook_s": {"median": webhook_median, "all": webhook_s},
        "ansible_alone_s": {"median": alone_median, "all": alone_s, "diff": not args.no_diff},
        "ansible_alone_without_diff_s": {
            "median": statistics.median(alone_nodiff_s) if alone_nodiff_s else None,
            "all": alone_nodiff_s},
        "ratio_webhook_to_ansible_alone": webhook_median / alone_median,
        "latency_polling_s": {"median": statistics.median(polling_s) if polling_s else None,
                              "all": polling_s,
                              "interval_s": INTERVAL, "jitter_s": JITTER},
        "agent_idle": {"seconds": idle_wall, "cpu_s": idle_cpu, "cpu_s_per_hour": agent_cpu_hour,
                       "rss_mib": agent_rss, "memory_mib": agent_memory},
        "ansible_pull": {"runs": len(pulls),
                         "cpu_s_median": statistics.median(s.cpu for s in pulls),
                         "wall_s_median": statistics.median(s.wall for s in pulls),
                         "peak_rss_mib": max(s.rss_mib for s in pulls),
                         "cpu_s_per_hour": pull_cpu_hour, "runs_per_hour": per_hour},
        "ratio_cpu_per_hour": ratio,
    }
    print(f"latency push -> converged: webhook median {webhook_median:.2f} s ({len(webhook_s)} "
          "commits" + (f"); polling every {INTERVAL:g}+0..{JITTER:g} s: median "
                       f"{result['latency_polling_s']['median']:.1f} s ({len(polling_s)} commits)"
                       if polling_s else ")"))
    without = result["ansible_alone_without_diff_s"]["median"]
    print(f"ansible-playbook alone, started at the commit: median {alone_median:.2f} s "
          + ("without --diff (as the agent runs)" if args.no_diff else
             f"with --diff (the agent's arguments), {without:.2f} s without")
          + f"; the agent's share of the webhook figure: {webhook_median - alone_median:+.2f} s")
    print(f"idle agent: {agent_cpu_hour:.2f} CPU s/hour, RSS {agent_rss:.1f} MiB (private "
          f"{agent_memory['private']:.1f}, shared library pages "
          f"{agent_memory['shared_clean']:.1f}, "
          f"PSS {agent_memory['pss']:.1f}); cron + "
          f"ansible-pull: {result['ansible_pull']['cpu_s_median']:.2f} CPU s per run x "
          f"{per_hour:.1f} runs/hour = {pull_cpu_hour:.1f} CPU s/hour, peak RSS "
          f"{result['ansible_pull']['peak_rss_mib']:.1f} MiB")
    print(f"RESULT name=agent_idle ratio={ratio:.3f} (agent CPU per hour / cron + ansible-pull)")
    print(f"RESULT name=agent_webhook ratio={webhook_median / alone_median:.3f} (webhook to "
          "converged / ansible-playbook alone to the same file)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "agent.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
