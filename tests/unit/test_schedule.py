"""install-timer: systemd units that systemd-analyze accepts, and crontab lines."""
import json
import shutil
import subprocess
import sys

import pytest

from gitops_ansible import schedule
from tests.conftest import CASES, require


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


# -- hostile values: refused, or quoted so that they stay one argument --------------------
HOSTILE_ENV = "dev\n[Service]\nExecStartPre=touch x"
AWKWARD = ["web%1", "100%", "$HOME", "${HOME}", "a b", "q\"u\\o'te", ";", "", "\\%", "%%d"]


def listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("kind", ["--systemd", "--cron"])
def test_a_newline_in_the_env_adds_no_line_or_entry(tmp_path, kind):
    done = run_cli("install-timer", kind, "--env", HOSTILE_ENV, "--output-dir", str(tmp_path))
    assert done.returncode == 5, done
    assert "--env 'dev\\n[Service]\\nExecStartPre=touch x': expected an environment name" \
        in done.stderr
    assert done.stdout == "" and listing(tmp_path) == []


@pytest.mark.parametrize("kind", ["--systemd", "--cron"])
def test_control_characters_in_any_value_are_refused(tmp_path, kind):
    hostile = [["--ref", "main\nExecStartPre=touch x"], ["--repo", "file:///r\r"],
               ["--", "--limit", "web\x1b[2J"]]
    if kind == "--cron":
        hostile.append(["--log-file", "/var/log/x\n* * * * * id"])
    for flags in hostile:
        done = run_cli("install-timer", kind, "--env", "dev", "--output-dir", str(tmp_path),
                       *flags)
        assert done.returncode == 5 and "without control characters" in done.stderr, done
        assert done.stdout == "" and listing(tmp_path) == []


def test_a_unit_name_with_a_path_writes_nothing_anywhere(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    done = run_cli("install-timer", "--systemd", "--env", "dev", "--name", "../../escaped",
                   "--output-dir", str(out))
    assert done.returncode == 5 and "--name '../../escaped': expected a systemd unit name" \
        in done.stderr, done
    assert listing(tmp_path) == []


def test_a_symlink_in_the_output_dir_is_not_written_through(tmp_path):
    out, target = tmp_path / "out", tmp_path / "elsewhere.txt"
    out.mkdir()
    target.write_text("precious\n")
    (out / "gitops-ansible-dev.timer").symlink_to(target)
    done = run_cli("install-timer", "--systemd", "--env", "dev", "--output-dir", str(out))
    assert done.returncode == 5 and "outside" in done.stderr, done
    assert target.read_text() == "precious\n"
    assert not (out / "gitops-ansible-dev.service").exists()  # nothing half written


@pytest.mark.parametrize("flags, words", [
    (["--randomized-delay", "-5"], "--randomized-delay -5: expected a whole number >= 0"),
    (["--user", "root\nExecStartPre=touch x"], "--user 'root\\nExecStartPre=touch x'"),
    (["--name", "x.service"], "without .service"),
    (["--name", "x" * 300], "(300 characters)"),
])
def test_bad_values_of_install_timer_are_refused(tmp_path, flags, words):
    done = run_cli("install-timer", "--systemd", "--env", "dev", "--output-dir", str(tmp_path),
                   *flags)
    assert done.returncode == 5 and words in done.stderr, done
    assert listing(tmp_path) == []


def directive_lines(unit: str) -> list[str]:
    return [line.split("=", 1)[0] for line in unit.splitlines() if "=" in line]


def test_awkward_values_stay_one_argument_in_the_unit(tmp_path):
    plain = schedule.Schedule("dev", ["/usr/bin/gitops-ansible", "run"])
    awkward = schedule.Schedule("dev", ["/usr/bin/gitops-ansible", "run", *AWKWARD])
    unit = schedule.service_unit(awkward)
    assert directive_lines(unit) == directive_lines(schedule.service_unit(plain))
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert exec_start == ('ExecStart=/usr/bin/gitops-ansible run "web%%1" "100%%" "$$HOME" '
                          '"$${HOME}" "a b" "q\\"u\\\\o\'te" ";" "" "\\\\%%" "%%%%d"')
    require(shutil.which("systemd-analyze") is not None, "systemd-analyze is not installed")
    paths = schedule.write_systemd(awkward, tmp_path)
    verify = subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, paths)],
                            capture_output=True, text=True)
    assert not [line for line in verify.stderr.splitlines() if "gitops-ansible-dev" in line
                and "not executable" not in line], verify.stderr


def cron_translates(command: str) -> tuple[str, str]:
    """What cron hands to /bin/sh, and as stdin (crontab(5), vixie cron's do_command.c):
    an unescaped % ends the command and starts its stdin, \\% is a %, other pairs stay."""
    out, escaped = [], False
    for index, char in enumerate(command):
        if escaped:
            if char == "%":
                out[-1] = "%"
            else:
                out.append(char)
            escaped = False
        elif char == "%":
            return "".join(out), command[index + 1:]
        else:
            out.append(char)
            escaped = char == "\\"
    return "".join(out), ""


def test_awkward_values_reach_the_command_unchanged_through_cron_and_sh(tmp_path):
    argv_file = tmp_path / "argv"
    printer = [sys.executable, "-c", "import json, sys; open(sys.argv[1], 'w').write("
               "json.dumps(sys.argv[2:]))", str(argv_file)]
    line = schedule.cron_line(schedule.Schedule("dev", printer + AWKWARD, 5, 0),
                              str(tmp_path / "100% log"))
    assert line.count("\n") == 0 and line.startswith("*/5 * * * * ")
    command, stdin = cron_translates(line.removeprefix("*/5 * * * * "))
    assert stdin == ""
    done = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(argv_file.read_text()) == AWKWARD
    assert (tmp_path / "100% log").exists()


def test_the_agent_unit_refuses_bad_names_and_writes_nothing(tmp_path):
    for name, user in (("../x", None), ("agent\n[Install]", None), ("agent", "a b")):
        with pytest.raises(schedule.ScheduleError):
            schedule.write_agent_unit(tmp_path, name, "/etc/gitops-ansible/agent.toml", user)
    assert listing(tmp_path) == []
    with pytest.raises(schedule.ScheduleError, match="control characters"):
        schedule.agent_unit("agent", "/etc/agent\n.toml")


def test_the_agent_unit_escapes_the_config_path():
    unit = schedule.agent_unit("agent", "/srv/100% sure/agent.toml")
    assert "Description=gitops-ansible agent (/srv/100%% sure/agent.toml)" in unit
    assert 'agent --config "/srv/100%% sure/agent.toml"' in unit


def test_check_agent_config_loads_the_file_as_the_agent_would(tmp_path):
    valid = CASES / "agent_config" / "valid.toml"
    assert schedule.check_agent_config(str(valid)) == str(valid.resolve())
    with pytest.raises(schedule.ScheduleError, match="nosuch.toml.*a readable TOML file"):
        schedule.check_agent_config(str(tmp_path / "nosuch.toml"))
    bad = CASES / "agent_config" / "unknown_agent_key.toml"
    with pytest.raises(schedule.ScheduleError, match="the agent cannot start with it.*key"):
        schedule.check_agent_config(str(bad))
