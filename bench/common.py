"""Shared by the benchmarks: time a command (wall, CPU, peak RSS), alternate sides, report.

Figures are ratios of sides measured in the same process, interleaved round by round (the
order flips every round), with a discarded warm-up round: other work on the machine then
weighs on every side alike. Peak RSS is ru_maxrss from wait4(): the largest single process
of the command's tree (not the sum of its processes).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
RESULTS = ROOT / "bench" / "results"


@dataclass
class Sample:
    wall: float
    cpu: float
    rss_mib: float
    rc: int
    output: str
    own_cpu: float | None = None  # the command's own process, where it reports it


def parse_args(default_repeat: int, doc: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=default_repeat,
                        help=f"measured runs per side (default {default_repeat}), after a warm-up")
    return parser.parse_args()


def bench_env(tmp: Path) -> dict:
    """The environment of every side: the venv's bin first (ansible-runner starts the
    ansible-playbook it finds on PATH), and Python bytecode cached as in an installed package
    (pip compiles on install; the editable checkout has no .pyc and this machine may set
    PYTHONDONTWRITEBYTECODE): written under TMP/pycache, so nothing lands in the project."""
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPYCACHEPREFIX=str(tmp / "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def close_masters(control_dir: Path) -> None:
    """Stop the SSH ControlPersist masters the runs left behind (ours, by their sockets)."""
    for sock in control_dir.glob("*"):
        subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "bench"],
                       capture_output=True, timeout=10)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def measure(argv, cwd, env, timeout: float = 900, started=None) -> Sample:
    """Run argv to its end in its own process group (and session: ``started``, if given,
    is told its pid); output goes to a file, not a pipe."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen([str(a) for a in argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        if started:
            started(proc.pid)
        timer = threading.Timer(timeout, _kill_group, (proc.pid,))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            _kill_group(proc.pid)
            proc.wait()
            raise
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        return Sample(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024,
                      proc.returncode, out.read().decode(errors="replace"))


def expect(label: str, sample: Sample, codes, text: str) -> Sample:
    """Stop the benchmark when a side did not do what it is measured doing."""
    if sample.rc not in codes or text not in sample.output:
        sys.exit(f"{label}: exit {sample.rc} (expected {codes}) or no {text!r} in its output:\n"
                 + sample.output[-4000:])
    return sample


def alternate(sides: dict, repeat: int) -> dict[str, list[Sample]]:
    """sides: name -> function returning a checked Sample. Round 0 is a warm-up, discarded.
    Odd rounds run the sides in reverse order: list the reference side in the middle, so
    that it runs right next to each side it is compared with."""
    names, samples = list(sides), {name: [] for name in sides}
    for round_no in range(repeat + 1):
        for name in (names if round_no % 2 == 0 else names[::-1]):
            sample = sides[name]()
            print(f"  round {round_no}{' (warm-up)' if not round_no else ''}: {name}: "
                  f"{sample.wall:.3f} s", file=sys.stderr, flush=True)
            if round_no:
                samples[name].append(sample)
    return samples


def summarize(samples: list[Sample]) -> dict:
    walls = [s.wall for s in samples]
    return {"runs": len(samples), "median_s": statistics.median(walls), "min_s": min(walls),
            "cpu_median_s": statistics.median(s.cpu for s in samples),
            "peak_rss_mib": max(s.rss_mib for s in samples), "walls_s": walls}


def ratios(rows: dict, numerator: str, denominator: str) -> dict:
    """The RESULT: the median over rounds of the round's wall-time ratio (the two sides ran
    back to back, so a burst of load elsewhere that spans a round weighs on both). Also,
    to judge the noise: the ratio of the median walls, of the min walls, and of the median
    CPU times (user+sys of the command's whole process tree)."""
    num, den = rows[numerator], rows[denominator]
    return {"per-round median": statistics.median(
                a / b for a, b in zip(num["walls_s"], den["walls_s"])),
            "medians": num["median_s"] / den["median_s"], "mins": num["min_s"] / den["min_s"],
            "cpu medians": num["cpu_median_s"] / den["cpu_median_s"]}


def report(name: str, rows: dict, numerator: str, denominator: str, goal: str, met,
           commands: dict, extra: dict | None = None) -> None:
    """Print the table and the RESULT line; write bench/results/NAME.json."""
    found = ratios(rows, numerator, denominator)
    ratio = found["per-round median"]
    print(f"{'SIDE':<36} {'RUNS':>4} {'MEDIAN s':>9} {'MIN s':>8} {'CPU s':>7} {'PEAK RSS MiB':>12}")
    for side, row in rows.items():
        print(f"{side:<36} {row['runs']:>4} {row['median_s']:>9.3f} {row['min_s']:>8.3f} "
              f"{row['cpu_median_s']:>7.3f} {row['peak_rss_mib']:>12.1f}")
    print(f"ratio {numerator} / {denominator}: " + ", ".join(
        f"{label} {value:.3f}" for label, value in found.items()))
    for label, value in (extra or {}).items():
        print(f"{label}: " + ", ".join(f"{k} {v:.3f}" for k, v in value.items()))
    print(f"RESULT name={name} ratio={ratio:.3f} goal={goal} met={'yes' if met(ratio) else 'no'}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({
        "name": name, "ratio": round(ratio, 4), "goal": goal, "met": bool(met(ratio)),
        "numerator": numerator, "denominator": denominator, "ratios": found, "rows": rows,
        "extra": extra or {}, "commands": commands, "loadavg_at_end": os.getloadavg(),
        "cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        indent=2) + "\n")
