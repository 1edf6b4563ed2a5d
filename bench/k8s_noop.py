"""A no-op converge of a cluster holding 200 objects: gitops-ansible push versus
`kubectl apply --server-side` of the same manifests.

    cd /work/k8s-wt && .venv/bin/python bench/k8s_noop.py [--repeat N]

Starts a lab cluster (lab/kube.py: etcd + kube-apiserver + controllers + kwok) and a
repository whose cluster target `bench` has 200 objects in clusters/bench/: 10 namespaces,
each with 15 ConfigMaps, 2 Services and 2 Deployments (1 replica). Both sides converge once,
unmeasured; then each is run N times, interleaved, with nothing to change:

    gitops-ansible push --env bench --path REPO --state-dir STATE      (exit 0)
    kubectl apply --server-side --field-manager=bench-kubectl -R -f REPO/clusters/bench

gitops-ansible does more than kubectl here: it renders and checks every manifest, reads the
server's APIs, reads the live objects and the last inventory (for prune), and checks the
health of the 20 Deployments; kubectl only applies. It asks less of the server: one LIST per
kind finds the objects nobody wrote since they were last found equal to Git (their
managedFields are those recorded), so a no-op sends no apply or dry-run per object, where
kubectl sends a PATCH per object. The kubectl side uses its own field manager (with ours it
would drop the annotations gitops-ansible sets). The ratio printed is gitops-ansible /
kubectl (per-round median of the wall times); issue 18's goal is at most 1.0.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from common import ROOT, VENV_BIN, alternate, bench_env, expect, measure, parse_args, report, \
    summarize

sys.path.insert(0, str(ROOT))
from lab.kube import KubeCluster, kubectl_path  # noqa: E402

NAMESPACES, CONFIGMAPS, SERVICES, DEPLOYMENTS = 10, 15, 2, 2


def manifests(ns: str) -> str:
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}]
    docs += [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"cm-{i}",
              "namespace": ns}, "data": {"index": str(i), "ns": ns}} for i in range(CONFIGMAPS)]
    docs += [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"svc-{i}",
              "namespace": ns}, "spec": {"selector": {"app": f"app-{i}"},
                                         "ports": [{"port": 80 + i}]}} for i in range(SERVICES)]
    docs += [{"apiVersion": "apps/v1", "kind": "Deployment",
              "metadata": {"name": f"app-{i}", "namespace": ns},
              "spec": {"replicas": 1, "selector": {"matchLabels": {"app": f"app-{i}"}},
                       "template": {"metadata": {"labels": {"app": f"app-{i}"}}, "spec": {
                           "containers": [{"name": "app", "image": "registry.invalid/app:1"}]}}}}
             for i in range(DEPLOYMENTS)]
    return "".join("---\n" + yaml.safe_dump(d, sort_keys=False) for d in docs)


def build_repo(repo: Path, cluster: KubeCluster) -> int:
    subprocess.run(["cp", "-r", str(ROOT / "playbooks"), str(ROOT / "roles"),
                    str(ROOT / "ansible.cfg"), str(repo)], check=True)
    (repo / "inventories/bench").mkdir(parents=True)
    (repo / "inventories/bench/hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": {
        "bench": {"platform": "kubernetes", "k8s_kubeconfig": str(cluster.kubeconfig),
                  "k8s_context": cluster.name}}}}))
    count = 0
    for n in range(NAMESPACES):
        path = repo / "clusters/bench" / f"ns-{n}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = manifests(f"bench-{n}")
        path.write_text(text)
        count += text.count("\n---\n") + 1
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost",
           "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "bench: 200 objects"]):
        subprocess.run(git + args, cwd=repo, check=True)
    return count


def main() -> None:
    args = parse_args(3, __doc__)
    kubectl = kubectl_path()
    if not kubectl:
        sys.exit("kubectl not found")
    with tempfile.TemporaryDirectory(prefix="gatbench-k8s-") as tmp:
        tmp = Path(tmp)
        with KubeCluster(tmp / "cluster", "bench") as cluster:
            repo = tmp / "repo"
            repo.mkdir()
            objects = build_repo(repo, cluster)
            assert objects == 200, objects
            # this checkout's package, whatever the venv's editable install points at
            env = dict(bench_env(tmp), PYTHONPATH=str(ROOT))
            push = [VENV_BIN / "gitops-ansible", "push", "--env", "bench", "--path", repo,
                    "--state-dir", tmp / "state"]
            apply = [kubectl, f"--kubeconfig={cluster.kubeconfig}", f"--context={cluster.name}",
                     "apply", "--server-side", "--field-manager=bench-kubectl", "-R", "-f",
                     repo / "clusters/bench"]
            expect("gitops-ansible push (first converge)", measure(push, repo, env), (2,),
                   "Deployment bench-9/app-1: healthy")
            expect("kubectl apply (first)", measure(apply, repo, env), (0,), "serverside-applied")
            sides = {
                "gitops-ansible push (no-op)": lambda: expect(
                    "gitops-ansible push", measure(push, repo, env), (0,), "nothing changed"),
                "kubectl apply --server-side": lambda: expect(
                    "kubectl apply", measure(apply, repo, env), (0,), "serverside-applied"),
            }
            samples = alternate(sides, args.repeat)
    rows = {name: summarize(s) for name, s in samples.items()}
    report("k8s_noop", rows, "gitops-ansible push (no-op)", "kubectl apply --server-side",
           "<= 1.0", lambda ratio: ratio <= 1.0,
           {"gitops-ansible": [str(a) for a in push], "kubectl": [str(a) for a in apply],
            "objects": objects})


if __name__ == "__main__":
    main()
