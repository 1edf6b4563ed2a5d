"""Issue 19, deliverable 7: the Kubernetes API server killed mid-apply of a large commit.

A cluster of its own (lab/kube.py), a commit of a few hundred objects, `gitops-ansible run`
as a real process; the kube-apiserver is SIGKILLed while the role applies them (seen on
the server: part of the commit's ConfigMaps exist), etcd and its data stay. The run must
end, failed, saying which cluster and why; status and history must say so and keep the
last good revision; what was applied before the kill must be in the run's records; and
once the API server is back, the next cycle converges the commit fully.
"""
from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from lab.kube import KubeCluster
from tests.conftest import events
from tests.integration.test_kubernetes import (cluster_target, configmap, deployment, docs,
                                               estate, namespace, prerequisites)  # noqa: F401

pytestmark = [pytest.mark.kubernetes, pytest.mark.git, pytest.mark.e2e]

TARGET = "big"
NAMESPACES = ("t-big-a", "t-big-b", "t-big-c")
CONFIGMAPS = 80       # per namespace: 240 ConfigMaps, ~10-20 s of apply here
DEPLOYMENTS = 3       # per namespace, applied last (workloads)
KILL_AT = 25          # ConfigMaps of the commit on the server when the API server dies
RUN_BOUND = 120       # seconds a run may take once the API server is gone


@pytest.fixture(scope="module")
def cluster(kube_assets, tmp_path_factory):
    """A cluster of this module's own: its API server dies here."""
    with KubeCluster(tmp_path_factory.mktemp("kube-fault"), "fault", assets=kube_assets) as c:
        yield c


def manifests(revision_note: str) -> str:
    objects = [namespace(ns) for ns in NAMESPACES]
    for ns in NAMESPACES:
        objects += [configmap(f"cm-{i:03d}", ns, {"index": str(i), "note": revision_note})
                    for i in range(CONFIGMAPS)]
        objects += [deployment(f"web-{i}", ns, 1) for i in range(DEPLOYMENTS)]
    return docs(*objects)


def ours(cluster: KubeCluster, revision: str) -> list[dict]:
    """The ConfigMaps of the test namespaces that carry ``revision``, from the API."""
    status, answer = cluster.request(
        "GET", "/api/v1/configmaps?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dgitops-ansible")
    assert status == 200, answer
    return [cm for cm in answer["items"] if cm["metadata"]["namespace"] in NAMESPACES
            and cm["metadata"]["annotations"]["gitops-ansible.io/revision"] == revision]


def kill_mid_apply(cluster: KubeCluster, revision: str, run, deadline: float) -> tuple:
    """SIGKILL the API server once KILL_AT of the commit's ConfigMaps exist: their count, and
    the pid killed."""
    while time.monotonic() < deadline:
        assert run.poll() is None, f"the run ended before the kill:\n{run.communicate()}"
        count = len(ours(cluster, revision))
        if count >= KILL_AT:
            return count, cluster.kill("kube-apiserver")
        time.sleep(0.1)
    raise AssertionError("the commit's ConfigMaps did not appear in time")


def cli_json(cli, *args):
    return json.loads(cli(*args, "--json", check_code=0).stdout)


def test_api_server_killed_mid_apply(cli, git_servers, cluster, tmp_path, request):
    tree = estate(git_servers, tmp_path, request.node.name, {"lab": {TARGET: cluster_target(
        cluster, k8s_manifests_health_timeout=60)}})
    tree.write(f"clusters/{TARGET}/all.yaml", docs(*[namespace(ns) for ns in NAMESPACES]))
    good = tree.commit("three namespaces")
    cli("run", "--repo", tree.url, "--env", "lab", check_code=2)

    tree.write(f"clusters/{TARGET}/all.yaml", manifests("large"))
    large = tree.commit(f"{len(NAMESPACES) * CONFIGMAPS} ConfigMaps, "
                        f"{len(NAMESPACES) * DEPLOYMENTS} Deployments")
    run = cli.popen("run", "--repo", tree.url, "--env", "lab", "--json")
    started = time.monotonic()
    try:
        seen, pid = kill_mid_apply(cluster, large, run, started + RUN_BOUND)
        killed = time.monotonic()
        out, err = run.communicate(timeout=RUN_BOUND)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    took = time.monotonic() - killed
    ended = subprocess.CompletedProcess(run.args, run.returncode, out, err)
    print(f"{seen} ConfigMaps on the server {killed - started:.1f} s after the start: "
          f"kube-apiserver (pid {pid}) killed; the run ended {took:.1f} s later, exit "
          f"{run.returncode}")

    # the run ends, failed, naming the cluster, its server and the connection failure
    assert ended.returncode == 4, (out[-3000:], err[-3000:])
    assert "Traceback" not in out + err
    assert took < 30, took
    [result] = [e for e in events(ended) if e["event"] == "cycle_result"]
    print(result["message"])
    stop = f"the API server {cluster.server} stopped answering"
    assert result["status"] == "failed" and result["hosts"] == {TARGET: "failed"}
    # refused; or reset, or closed without a response, when the kill cut the request in flight
    cut = re.search(f"{TARGET}: Apply the objects: {re.escape(stop)} \\((Connection refused|"
                    f"Connection reset by peer|Remote end closed connection without response)"
                    f"\\) at (ConfigMap \\S+); ", result["message"])
    assert cut, result["message"]

    # status and history: the large revision failed on the cluster, the good one is kept
    [status] = cli_json(cli, "status", "--env", "lab")
    assert status["good_revision"] == good and status["applied_revision"] == large
    assert status["failing"] and status["last_run"]["status"] == "failed"
    assert "applied revision has failed hosts" in status["attention"]
    runs = cli_json(cli, "history", "--env", "lab")
    assert [(r["revision"], r["status"], r["hosts"]) for r in runs[:2]] == [
        (large, "failed", {TARGET: "failed"}), (good, "changed", {TARGET: "changed"})]
    assert stop in runs[0]["message"]

    # the run's records say what was applied before the kill: what the server has now
    cluster.restart("kube-apiserver")
    detail = cli_json(cli, "history", runs[0]["id"])
    [host] = detail["hosts"]
    assert host["outcome"] == "failed" and host["changed"] >= 1 and stop in host["message"]
    tasks = {t["task"]: t for t in detail["tasks"]}
    assert tasks["Apply the objects"]["status"] == "failed"
    on_server = {f"ConfigMap {cm['metadata']['namespace']}/{cm['metadata']['name']}"
                 for cm in ours(cluster, large)}
    report = tasks["Report the objects applied with changes"]
    assert report["status"] == "changed"
    reported = {line.removesuffix(": created") for line in report["message"].split("; ")}
    # all that the server has, but the object in flight when the kill cut its request
    in_flight = {cut.group(2)} if cut.group(1) != "Connection refused" else set()
    assert reported <= on_server and on_server - reported <= in_flight, (reported, on_server)
    assert f"{len(reported)} object(s) applied before it" in host["message"]
    text = cli("history", runs[0]["id"], check_code=0).stdout
    assert "Report the objects applied with changes  ConfigMap t-big-a/cm-000: created" in text

    # the API server is back: the next cycle converges the commit fully
    done = cli("run", "--repo", tree.url, "--env", "lab", "--json", check_code=2)
    assert [e["hosts"] for e in events(done) if e["event"] == "cycle_result"] == [
        {TARGET: "changed"}]
    [status] = cli_json(cli, "status", "--env", "lab")
    assert status["good_revision"] == large and not status["failing"]
    every = ours(cluster, large)
    assert len(every) == len(NAMESPACES) * CONFIGMAPS
    assert all(cm["data"] == {"index": str(int(cm["metadata"]["name"][3:])), "note": "large"}
               for cm in every)
    assert all(("gitops-ansible", "Apply") in {(m["manager"], m["operation"]) for m in
                                               cm["metadata"]["managedFields"]} for cm in every)
    for ns in NAMESPACES:
        deployments = cluster.request("GET", f"/apis/apps/v1/namespaces/{ns}/deployments")[1]
        assert sorted((d["metadata"]["name"], d["metadata"]["annotations"][
            "gitops-ansible.io/revision"], d["status"].get("readyReplicas"))
            for d in deployments["items"]) == [
            (f"web-{i}", large, 1) for i in range(DEPLOYMENTS)]
