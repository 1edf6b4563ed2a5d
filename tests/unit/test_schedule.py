"""install-timer: systemd units that systemd-analyze accepts, and crontab lines."""
import shutil
import subprocess
import sys

import pytest

from gitops_ansible import schedule
from tests.conftest import require


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "gitops_ansible", *args], capture_output=True,
                          text=True)


def test_systemd_units_pass_systemd_analyze_verify(tmp_path):
    done = run_cli("install-timer", "--systemd", "--env", "prod", "--repo",
                   "https://git.example.com/estate.git", "--interval", "15m",
                   "--output-dir", str(tmp_path), "--", "--splay", "0", "--limit", "web%1")
    assert done.returncode == 0, done.stderr
    service = (tmp_path / "gitops-ansible-prod.service").read_text()
    timer = (tmp_path / "gitops-ansible-prod.timer").read_text()
    assert "SuccessExitStatus=2 3 6" in service
    assert "--lock fail" in service and "web%%1" in service
    assert "OnUnitInactiveSec=15min" in timer and "Unit=gitops-ansible-prod.service" in timer
    require(shutil.which("systemd-analyze") is not None, "systemd-analyze is not installed")
    verify = subprocess.run(["systemd-analyze", "verify", "--man=no",
                             str(tmp_path / "gitops-ansible-prod.service"),
                             str(tmp_path / "gitops-ansible-prod.timer")],
                            capture_output=True, text=True)
    problems = [line for line in verify.stderr.splitlines()
                if "gitops-ansible-prod" in line]
    assert verify.returncode == 0 and not problems, verify.stderr


def test_cron_line_runs_the_cycle_with_splay_and_lock_fail():
    done = run_cli("install-timer", "--cron", "--env", "dev", "--repo", "file:///srv/estate.git",
                   "--interval", "10")
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith("*/10 * * * * ")
    assert " run --env dev --lock fail --repo file:///srv/estate.git --splay 60" in line
    assert line.endswith(">>/var/log/gitops-ansible-dev.log 2>&1")


@pytest.mark.parametrize("interval", ["7", "0", "soon"])
def test_cron_refuses_intervals_it_cannot_express(interval):
    done = run_cli("install-timer", "--cron", "--env", "dev", "--interval", interval)
    assert done.returncode == 5 and "--interval" in done.stderr


def test_hourly_interval():
    minutes = schedule.parse_interval("2h")
    line = schedule.cron_line(schedule.Schedule("dev", ["gitops-ansible", "run"], minutes, 0))
    assert line.startswith("0 */2 * * * gitops-ansible run >>")
