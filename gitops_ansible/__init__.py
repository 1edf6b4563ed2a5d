"""gitops-ansible: converge an estate (Kubernetes clusters, VMs, bare hosts) on a Git repository.

The library is the product; the CLI (``cli``) and the agent are its clients. One module
per stage of the cycle: ``source`` -> ``inventory``/``plan`` -> ``execute`` -> ``store`` ->
``report``, tied together by ``reconcile``. The public API::

    import gitops_ansible as ga

    settings = ga.load_settings({"repo": "https://git.example/estate.git", "env": "prod",
                                 "state_dir": "/var/lib/gitops-ansible"})
    result = ga.cycle(settings, ga.Mode.PULL, ga.Reporter(on_event=print))
    result.exit_code, result.status, result.run_id, result.hosts

    ga.status(settings.state_path)                  # [EnvStatus]: state, last run, attention
    ga.history(settings.state_path, "prod", 20)     # newest runs, with per-host outcomes
    ga.run_detail(settings.state_path, result.run_id)  # one run: hosts and tasks
    ga.suspend(settings.state_path, "prod", "database migration"); ga.resume(...)

The library prints nothing and reads no environment variable or system file unless asked
(``load_settings(..., environ=os.environ, system=True)``; ``ConsoleReporter`` prints).
"""
from .config import AgentConfig, ConfigError, Settings, load as load_settings, load_agent
from .reconcile import Cancel, Cancelled, Result, cycle
from .report import ConsoleReporter, ExitCode, Reporter
from .records import EnvStatus, history, resume, run_detail, status, suspend
from .store import EnvState, Mode, RunStatus, StoreError

__version__ = "0.1.0"
__all__ = [
    "AgentConfig", "Cancel", "Cancelled", "ConfigError", "ConsoleReporter", "EnvState", "EnvStatus", "ExitCode",
    "Mode", "Reporter", "Result", "RunStatus", "Settings", "StoreError", "cycle", "history",
    "load_agent", "load_settings", "resume", "run_detail", "status", "suspend",
]
