"""The sources of a cluster's objects, found on the controller, inside the checkout only.

    lookup('k8s_manifests_sources', dirs, root=ROOT, charts=[...], kustomize=[cmd], helm=cmd,
           namespace=NS)
    -> {"templates": [{path, source}], "built": [{source, text, namespace?}], "problems": []}

- A directory in ``dirs`` is walked: every *.yml/*.yaml file is a manifest (a Jinja2
  template, rendered by the role with the inventory's variables); a directory holding a
  kustomization (kustomization.yaml, kustomization.yml or Kustomization) is built with
  kustomize instead, and not walked.
- Before a kustomization is built, every path it names (resources, components, patches,
  generators' files...) and every kustomization those lead to is checked: a local path
  inside the checkout, existing. A remote base (a URL, host/path?ref=) is refused: a
  converge reads only the revision being converged. Helm charts inside a kustomization
  (helmCharts) are refused too: the target's k8s_manifests_helm_charts renders them.
- A chart of ``charts`` ({name, chart, repo?, version?, namespace?, values?}; the
  namespace defaults to the target's) is rendered
  with ``helm template`` (hooks left out, CRDs included), its values given on stdin (they
  may hold secrets: never on disk or in argv), with Helm's cache and configuration in a
  temporary directory removed afterwards. A chart is a directory inside the checkout, or,
  with ``repo``, a chart of that repository at ``version``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

from ansible.errors import AnsibleError
from ansible.plugins.lookup import LookupBase

KUSTOMIZATIONS = ("kustomization.yaml", "kustomization.yml", "Kustomization")
# kustomization keys that name files or directories (lists of paths, or of mappings
# with a 'path'); generators' 'files' may be 'key=path'
PATH_LISTS = ("resources", "bases", "components", "crds", "patchesStrategicMerge",
              "generators", "transformers", "validators", "configurations")
PATH_ITEMS = ("patches", "patchesJson6902", "replacements")
GENERATORS = ("configMapGenerator", "secretGenerator")
REFUSED_KEYS = {"helmCharts": "use the target's k8s_manifests_helm_charts",
                "helmChartInflationGenerator": "use the target's k8s_manifests_helm_charts",
                "helmGlobals": "use the target's k8s_manifests_helm_charts"}
REMOTE = re.compile(r"^([a-z][a-z0-9+.-]*://|git@|[\w.-]+\.[a-z]{2,}/[^ ]*(\?ref=|//))", re.I)
TIMEOUT = 120
SOURCE = re.compile(r"^# Source: (.+)$", re.M)


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _kustomization(directory: Path) -> Path | None:
    return next((directory / n for n in KUSTOMIZATIONS if (directory / n).is_file()), None)


def _inside(base: Path, name: str, root: Path, where: str, problems: list) -> Path | None:
    if REMOTE.match(name):
        problems.append(f"{where}: {name!r} is remote; only paths inside the repository are "
                        "built (a converge reads only the revision being converged)")
        return None
    path = (base / name).resolve()
    if not path.is_relative_to(root):
        problems.append(f"{where}: {name!r} leads outside the repository ({path})")
        return None
    if not path.exists():
        problems.append(f"{where}: {name!r} not found ({_rel(path, root)})")
        return None
    return path


def _named(spec: dict) -> list[str]:
    """The paths a kustomization names."""
    names = []
    for key in PATH_LISTS:
        names += [v for v in spec.get(key) or [] if isinstance(v, str) and "\n" not in v]
    for key in PATH_ITEMS:
        names += [v["path"] for v in spec.get(key) or [] if isinstance(v, dict)
                  and isinstance(v.get("path"), str)]
    for key in GENERATORS:
        for gen in spec.get(key) or []:
            if not isinstance(gen, dict):
                continue
            names += [f.split("=", 1)[-1] for f in gen.get("files") or [] if isinstance(f, str)]
            names += [e for e in gen.get("envs") or [] if isinstance(e, str)]
            names += [gen["env"]] if isinstance(gen.get("env"), str) else []
    openapi = spec.get("openapi")
    if isinstance(openapi, dict) and isinstance(openapi.get("path"), str):
        names.append(openapi["path"])
    return names


def check_kustomization(directory: Path, root: Path, problems: list, seen=None) -> None:
    """Every kustomization reachable from ``directory`` names local paths only."""
    import yaml

    seen = set() if seen is None else seen
    if directory in seen:
        return
    seen.add(directory)
    path = _kustomization(directory)
    where = _rel(path, root)
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        problems.append(f"{where}: cannot be read as YAML: {exc}")
        return
    if not isinstance(spec, dict):
        problems.append(f"{where}: expected a mapping")
        return
    for key, why in REFUSED_KEYS.items():
        if key in spec:
            problems.append(f"{where}: {key} is not built here: {why}")
    for name in _named(spec):
        found = _inside(directory, name, root, where, problems)
        if found is not None and found.is_dir():
            if _kustomization(found) is None:
                problems.append(f"{where}: {name!r} is a directory without a kustomization")
            else:
                check_kustomization(found, root, problems, seen)


def _run(argv, where, problems, stdin=None, env=None) -> str | None:
    command = f"{Path(argv[0]).name} {argv[1]}"
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                              timeout=TIMEOUT, env=env)
    except FileNotFoundError:
        problems.append(f"{where}: {argv[0]} not found: install it on the controller, or set "
                        "the role's variable that names it")
        return None
    except subprocess.TimeoutExpired:
        problems.append(f"{where}: {command} took more than {TIMEOUT}s")
        return None
    if done.returncode:
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()] or ["(no output)"]
        problems.append(f"{where}: {command} failed: {' '.join(lines[-3:])[:800]}")
        return None
    return done.stdout


def kustomize(directory: Path, root: Path, command: list[str], problems: list) -> list[dict]:
    where = _rel(directory, root)
    before = len(problems)
    check_kustomization(directory, root, problems)
    if len(problems) > before:
        return []
    text = _run([*command, str(directory)], f"{where} (kustomize)", problems)
    return [] if text is None else [{"source": f"{where} (kustomize build)", "text": text}]


def helm_chart(chart: dict, root: Path, helm: str, default_namespace: str,
               problems: list) -> list[dict]:
    name = chart.get("name")
    where = f"k8s_manifests_helm_charts[{name}]"
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,51}[a-z0-9])?",
                                                     name):
        problems.append(f"{where}: 'name' must be a release name ([a-z0-9-], at most 53)")
        return []
    if not isinstance(chart.get("chart"), str) or not chart["chart"]:
        problems.append(f"{where}: 'chart' must be a directory in the repository, or a chart "
                        "name with 'repo'")
        return []
    unknown = sorted(set(chart) - {"name", "chart", "repo", "version", "namespace", "values"})
    if unknown:
        problems.append(f"{where}: unknown key '{unknown[0]}' (expected name, chart, repo, "
                        "version, namespace, values)")
        return []
    values = chart.get("values") or {}
    if not isinstance(values, dict):
        problems.append(f"{where}: 'values' must be a mapping")
        return []
    argv = [helm, "template", name]
    if chart.get("repo"):
        if not chart.get("version"):
            problems.append(f"{where}: 'version' is required with 'repo' (a converge must not "
                            "change with the repository's latest chart)")
            return []
        argv += [chart["chart"], "--repo", str(chart["repo"]), "--version", str(chart["version"])]
    else:
        path = _inside(root, chart["chart"], root, where, problems)
        if path is None:
            return []
        argv += [str(path)] + (["--version", str(chart["version"])] if chart.get("version")
                               else [])
    namespace = str(chart.get("namespace") or default_namespace)
    argv += ["--namespace", namespace, "--values", "-", "--include-crds", "--no-hooks"]
    with tempfile.TemporaryDirectory(prefix="k8s-manifests-helm-") as home:
        env = {"PATH": os.environ.get("PATH", ""), "HOME": home,
               "HELM_CACHE_HOME": f"{home}/cache", "HELM_CONFIG_HOME": f"{home}/config",
               "HELM_DATA_HOME": f"{home}/data"}
        text = _run(argv, where, problems, stdin=json.dumps(values), env=env)
    if text is None:
        return []
    out = []
    for doc in re.split(r"^---\s*$", text, flags=re.M):
        if doc.strip():
            found = SOURCE.search(doc)
            out.append({"source": f"{where} {found.group(1) if found else '(rendered)'}",
                        "text": doc, "namespace": namespace})
    return out


def sources(dirs, root: Path, charts, kustomize_cmd, helm, namespace) -> dict:
    templates, built, problems = [], [], []
    for item in dirs:
        base = (root / item).resolve()
        if not base.is_relative_to(root):
            problems.append(f"manifest directory {item}: outside the repository ({base})")
            continue
        if not base.is_dir():
            problems.append(f"manifest directory not found: {item}")
            continue
        if _kustomization(base):
            built += kustomize(base, root, kustomize_cmd, problems)
            continue
        for current, subdirs, files in os.walk(base):
            here = Path(current)
            units = [sub for sub in sorted(subdirs) if _kustomization(here / sub)]
            for sub in units:
                built += kustomize(here / sub, root, kustomize_cmd, problems)
            subdirs[:] = sorted(s for s in subdirs if s not in units)
            for name in sorted(files):
                if name.endswith((".yml", ".yaml")):
                    path = here / name
                    templates.append({"path": str(path), "source": _rel(path, root)})
    for chart in charts or []:
        if not isinstance(chart, dict):
            problems.append("k8s_manifests_helm_charts: every item must be a mapping")
            continue
        built += helm_chart(chart, root, helm, namespace, problems)
    return {"templates": templates, "built": built, "problems": problems}


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        root = kwargs.get("root")
        if not root:
            raise AnsibleError("k8s_manifests_sources: root is required")
        dirs = terms[0] if len(terms) == 1 and isinstance(terms[0], list) else terms
        command = kwargs.get("kustomize") or ["kubectl", "kustomize"]
        return [sources([str(d) for d in dirs], Path(root).resolve(), kwargs.get("charts"),
                        [str(c) for c in command], str(kwargs.get("helm") or "helm"),
                        str(kwargs.get("namespace") or "default"))]
