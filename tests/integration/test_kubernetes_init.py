"""`gitops-ansible init --platform kubernetes`: the new repository passes its own checks
(ansible-lint, yamllint) and, given a cluster, converges it by push: the kustomization of
clusters/cluster/ built and applied, its Deployment and Service in the target's
k8s_namespace, on a real API server (lab/kube.py, the session's cluster "lab").
"""
from __future__ import annotations

import subprocess

import pytest
import yaml

from lab.kube import KubeCluster
# (autouse) kubectl, the kubernetes client and kubernetes.core, which ansible-lint needs too
from tests.integration.test_kubernetes import prerequisites  # noqa: F401
from tests.integration.test_roles_quality import output, tool

# the Kubernetes modules run last (tests/conftest.py): the session's cluster starts then
pytestmark = [pytest.mark.kubernetes, pytest.mark.git, pytest.mark.e2e]
TARGET, NAMESPACE = "cluster", "hello"  # what the skeleton's inventory and manifests name


def init(cli, repo) -> None:
    done = cli("init", repo, "--platform", "kubernetes")
    assert done.returncode == 0, output(done)


def test_init_kubernetes_passes_its_own_checks(tmp_path, cli):
    repo = tmp_path / "repo"
    init(cli, repo)
    yl = tool("yamllint", "--strict", ".", cwd=repo)
    assert yl.returncode == 0, output(yl)
    al = tool("ansible-lint", cwd=repo)
    assert al.returncode == 0, output(al)


def point_at(repo, cluster: KubeCluster) -> None:
    """What a new user does first: the dev target's context, uncommented, and a commit;
    the kubeconfig comes from $KUBECONFIG (the inventory's default)."""
    hosts = repo / "inventories/dev/hosts.yml"
    text = hosts.read_text()
    assert "# k8s_context: dev\n" in text
    hosts.write_text(text.replace("# k8s_context: dev\n", f"k8s_context: {cluster.name}\n"))
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "commit", "-qam", "dev: the lab's cluster"], check=True)


def forget(cluster: KubeCluster) -> None:
    """The session's cluster is shared: remove what this test applied."""
    cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=false",
                    check=False)
    cluster.kubectl("delete", "configmap", f"inventory-{TARGET}", "-n", "gitops-ansible-system",
                    "--ignore-not-found", check=False)


@pytest.mark.kubernetes
@pytest.mark.e2e
def test_init_kubernetes_converges_a_cluster_by_push(tmp_path, cli, kube_cluster):
    repo = tmp_path / "repo"
    init(cli, repo)
    point_at(repo, kube_cluster)
    cli.env["KUBECONFIG"] = str(kube_cluster.kubeconfig)
    try:
        cli("push", "--env", "dev", "--path", repo, check_code=2)
        for kind in ("deployment", "service"):
            done = kube_cluster.kubectl("get", kind, NAMESPACE, "-n", NAMESPACE, "-o", "yaml")
            obj = yaml.safe_load(done.stdout)
            assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "gitops-ansible"
            assert obj["metadata"]["annotations"]["gitops-ansible.io/target"] == TARGET
        cli("push", "--env", "dev", "--path", repo, check_code=0)  # nothing left to change
    finally:
        forget(kube_cluster)
