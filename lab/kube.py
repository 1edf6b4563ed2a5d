"""Real Kubernetes API servers for tests: etcd + kube-apiserver, with workloads that get ready.

    cluster = KubeCluster(workdir, "east")      # name: 1-30 of [a-z0-9-], the kubeconfig context
    with cluster:                               # start() ... stop()
        cluster.kubeconfig                      # Path; context, cluster and user named "east"
        cluster.kubectl("apply", "--server-side", "-f", "x.yaml")  # CompletedProcess, checked
        cluster.apply(yaml_text)                # kubectl apply --server-side -f -
        cluster.server                          # "https://127.0.0.1:PORT"
        cluster.kill("kube-apiserver")          # SIGKILL (a crash); cluster.restart(...) again
    write_kubeconfig(path, [east, west])        # one kubeconfig with both contexts

Per cluster, all on loopback with free ports, in WORKDIR: etcd (data in WORKDIR/etcd, no
fsync), kube-apiserver (RBAC, default admission plugins, service CIDR 10.0.0.0/24),
kube-controller-manager (Deployments make ReplicaSets and Pods, Jobs, StatefulSets,
DaemonSets, namespace deletion, garbage collection, service-account tokens), kube-scheduler
(binds pods to nodes) and kwok, which plays the kubelet of NODES fake nodes (`NAME-node-1`,
... annotated kwok.x-k8s.io/node=fake): it reports them Ready and moves their pods through
their life by the stages in kube_build/kwok-stages.yaml: Running and Ready at once, Job pods
Succeeded, deleted pods gone. No container runs anywhere; images are never pulled.

Workloads that must never become ready, two ways:
  - label the pod template `lab.gitops-ansible/never-ready: "true"` (NEVER_READY_LABEL): the
    pods run but stay Ready=False, like a failing readiness probe;
  - or give it a nodeSelector no node has (NEVER_SCHEDULED_NODE_SELECTOR): Pending for good.

The apiserver's serving certificate, the client certificate (CN lab-admin, group
system:masters) and the service-account signing key are made fresh per cluster (a CA per
cluster, EC P-256, Python `cryptography`). Processes get PR_SET_PDEATHSIG: when the process
that started a cluster dies, the cluster dies with it. Logs: WORKDIR/*.log.

Binaries (assets) come from the per-machine cache CACHE/kube-KUBE_VERSION/bin (CACHE is
$GITOPS_LAB_CACHE or /var/cache/gitops-ansible-lab; 343 MB), built on first use from the Go
module proxy (ensure_assets: ~37 min cold on 2 cores, ~2 min with a warm Go build cache) by
the pinned recipe in kube_build/ (go.mod + go.sum per module; `python -m lab.kube pin
[MODULE...]` regenerates them after a version bump), under an flock so that concurrent
builders wait for one build; `python -m lab.kube build` (`make kube-assets`) builds
ahead. KUBEBUILDER_ASSETS, when set, supplies whichever of the binaries it has (envtest's
carries etcd, kube-apiserver and kubectl); the rest still come from the cache. A change to the
recipe (kube_build/*/go.*, LDFLAGS) makes the next ensure_assets rebuild in place.

helm (HELM_VERSION, for `helm template`) is built and cached the same way, as a binary group
of its own (HELM: CACHE/helm-HELM_VERSION/bin/helm, 59 MB, recipe kube_build/helm/, with its
own key, lock and log), so that neither recipe's change rebuilds the other's binaries:
ensure_helm() (~5.5 min cold on 2 cores, 13 s with a warm Go build cache), helm_path()
($HELM, else that build, else helm on PATH). `python -m lab.kube build` builds it after the
Kubernetes binaries.

Start: ~6-8 s per cluster on 2 cores (kube-apiserver's /readyz is nearly all of it; nodes are
Ready ~0.5 s later). Apply to Deployment available: ~1 s. Deleting a namespace: ~5 s.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import datetime
import fcntl
import hashlib
import http.client
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .cache import cache_root
from .system import free_ports

KUBE_VERSION = "v1.34.4"       # k8s.io/kubernetes; the staging modules k8s.io/* at v0.34.4
ETCD_VERSION = "v3.6.16"       # go.etcd.io/etcd/server/v3
KWOK_VERSION = "v0.8.0"        # sigs.k8s.io/kwok
HELM_VERSION = "v3.22.0"       # helm.sh/helm/v3
HELM_KUBE_VERSION = ("1", "37")  # helm v3.22's client-go v0.37 (its release build stamps 1.37)
RECIPE = Path(__file__).resolve().parent / "kube_build"
KWOK_STAGES = RECIPE / "kwok-stages.yaml"
# module directory in kube_build/ -> the main packages built from it
MODULES = {
    "kube": ["k8s.io/kubernetes/cmd/kube-apiserver",
             "k8s.io/kubernetes/cmd/kube-controller-manager",
             "k8s.io/kubernetes/cmd/kube-scheduler"],
    "etcd": ["go.etcd.io/etcd/server/v3"],
    "kwok": ["sigs.k8s.io/kwok/cmd/kwok"],
}
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
_MAJOR, _MINOR = KUBE_VERSION.lstrip("v").split(".")[:2]
_VERSION_VARS = {"gitVersion": KUBE_VERSION, "gitMajor": _MAJOR, "gitMinor": _MINOR,
                 "gitTreeState": "clean"}
LDFLAGS = {
    # what the Kubernetes release build stamps in (hack/lib/version.sh): kubectl version and
    # the /version endpoint report v1.34.4 instead of v0.0.0-master
    "kube": "-s -w " + " ".join(f"-X {pkg}.{var}={value}" for pkg in (
        "k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for var, value in _VERSION_VARS.items()),
    "etcd": "-s -w",
    "kwok": "-s -w",
}
STAGING_MODULES = [  # k8s.io/kubernetes v1.34's go.mod replaces these with ./staging/src/...
    "api", "apiextensions-apiserver", "apimachinery", "apiserver", "cli-runtime", "client-go",
    "cloud-provider", "cluster-bootstrap", "code-generator", "component-base",
    "component-helpers", "controller-manager", "cri-api", "cri-client", "csi-translation-lib",
    "dynamic-resource-allocation", "endpointslice", "externaljwt", "kms", "kube-aggregator",
    "kube-controller-manager", "kube-proxy", "kube-scheduler", "kubectl", "kubelet", "metrics",
    "mount-utils", "pod-security-admission", "sample-apiserver",
]  # sample-cli-plugin and sample-controller: not on the proxy at v0.34.4, and not needed

NEVER_READY_LABEL = "lab.gitops-ansible/never-ready"
NEVER_SCHEDULED_NODE_SELECTOR = {"lab.gitops-ansible/no-such-node": "true"}
NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
SERVICE_CIDR = "10.0.0.0/24"
POD_CIDR = "10.244.0.0/16"
START_TIMEOUT = 90  # seconds for one cluster to answer /readyz and have its nodes Ready


# ---------------------------------------------------------------------------------------------
# assets: the binaries, built once per machine

@dataclass
class KubeAssets:
    bin: dict[str, Path]   # binary name -> path
    source: str            # where they came from, for messages


@dataclass
class BinaryGroup:
    """Binaries built together into one cache entry, CACHE/NAME/bin, under a recipe key of
    their own: a change to one group's recipe rebuilds that group only."""
    name: str                       # the cache entry; also its .lock, .log and .tmp-PID
    modules: dict[str, list[str]]   # module directory in kube_build/ -> main packages
    ldflags: dict[str, str]         # module directory -> go build -ldflags
    binaries: tuple[str, ...]
    versions: dict[str, str]        # recorded in recipe.json


KUBE = BinaryGroup(f"kube-{KUBE_VERSION}", MODULES, LDFLAGS, BINARIES,
                   {"kubernetes": KUBE_VERSION, "etcd": ETCD_VERSION, "kwok": KWOK_VERSION})
_HELM_PKG = "helm.sh/helm/v3"
HELM = BinaryGroup(f"helm-{HELM_VERSION}", {"helm": [f"{_HELM_PKG}/cmd/helm"]}, {
    # what Helm's release build stamps in (its Makefile): `helm version` reports v3.22.0
    # instead of v3.22, and `helm template`'s .Capabilities.KubeVersion is v1.37.0, not v1.20.0
    "helm": "-s -w " + " ".join([
        f"-X {_HELM_PKG}/internal/version.version={HELM_VERSION}",
        f"-X {_HELM_PKG}/internal/version.gitTreeState=clean",
        *(f"-X {_HELM_PKG}/pkg/{pkg}.k8sVersion{part}={value}"
          for pkg in ("lint/rules", "chartutil")
          for part, value in zip(("Major", "Minor"), HELM_KUBE_VERSION))])},
    ("helm",), {"helm": HELM_VERSION})
GROUPS = (KUBE, HELM)  # `python -m lab.kube build` builds them in this order


def _go() -> str | None:
    return shutil.which("go") or (
        "/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None)


def recipe_key(group: BinaryGroup = KUBE) -> str:
    """Digest of everything that decides GROUP's build: pinned modules, flags, versions."""
    h = hashlib.sha256()
    for module in sorted(group.modules):
        for name in ("go.mod", "go.sum"):
            h.update((RECIPE / module / name).read_bytes())
        h.update(repr((group.modules[module], group.ldflags[module])).encode())
    return h.hexdigest()[:16]


def cache_dir(cache: str | os.PathLike | None = None, group: BinaryGroup = KUBE) -> Path:
    return cache_root(cache) / group.name


def _cached(cache=None, group: BinaryGroup = KUBE) -> dict[str, Path] | None:
    final = cache_dir(cache, group)
    try:
        stamp = json.loads((final / "recipe.json").read_text())
    except (OSError, ValueError):
        return None
    if stamp.get("key") != recipe_key(group):
        return None
    bins = {b: final / "bin" / b for b in group.binaries}
    return bins if all(os.access(p, os.X_OK) for p in bins.values()) else None


def _from_env() -> dict[str, Path]:
    env = os.environ.get("KUBEBUILDER_ASSETS")
    if not env:
        return {}
    return {b: Path(env, b) for b in BINARIES if os.access(Path(env, b), os.X_OK)}


def unavailable_reason(cache=None) -> str | None:
    """Why no cluster can start here (None: it can, perhaps after a build)."""
    if set(_from_env()) == set(BINARIES) or _cached(cache):
        return None
    if not _go():
        return ("no cached Kubernetes binaries and no Go toolchain to build them "
                "(make kube-assets, or KUBEBUILDER_ASSETS)")
    return None


def ensure_assets(cache=None, force: bool = False, log=None) -> KubeAssets:
    """The binaries: KUBEBUILDER_ASSETS first, then the cache (built here when missing)."""
    env = _from_env()
    if set(env) == set(BINARIES) and not force:
        return KubeAssets(env, f"KUBEBUILDER_ASSETS={os.environ['KUBEBUILDER_ASSETS']}")
    bins = _ensure(KUBE, cache, force, log)
    merged = {**bins, **env}
    source = str(cache_dir(cache)) + (
        f" + KUBEBUILDER_ASSETS ({', '.join(sorted(env))})" if env else "")
    return KubeAssets(merged, source)


def ensure_helm(cache=None, log=None, *, force: bool = False) -> Path:
    """The cached helm binary, built here when missing (~5.5 min cold on 2 cores)."""
    return _ensure(HELM, cache, force, log)["helm"]


def helm_unavailable_reason(cache=None) -> str | None:
    """Why ensure_helm cannot give a helm here (None: it can, perhaps after a build)."""
    if _cached(cache, HELM) or _go():
        return None
    return "no cached helm and no Go toolchain to build it (make kube-assets)"


def helm_path() -> str | None:
    """$HELM, else the cached build (without building it), else helm on PATH."""
    if os.environ.get("HELM"):
        return os.environ["HELM"]
    bins = _cached(None, HELM)
    return str(bins["helm"]) if bins else shutil.which("helm")


def _ensure(group: BinaryGroup, cache=None, force: bool = False, log=None) -> dict[str, Path]:
    """GROUP's cached binaries, built when missing or stale under the group's flock: a
    concurrent builder finishes first, and we then reuse its build."""
    bins = None if force else _cached(cache, group)
    if bins is not None:
        return bins
    final = cache_dir(cache, group)
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f"{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        bins = None if force else _cached(cache, group)
        if bins is None:
            _build(final, group, log)
            bins = _cached(cache, group)
            if bins is None:
                raise RuntimeError(f"the {group.name} build left no usable {final}")
    return bins


def _go_env(work: Path) -> dict:
    env = dict(os.environ, GOTOOLCHAIN="local", CGO_ENABLED="0", GOFLAGS="-mod=readonly",
               GOWORK="off")
    env["PATH"] = os.path.dirname(_go()) + os.pathsep + env.get("PATH", "")
    env.setdefault("GOCACHE", str(Path.home() / ".cache" / "go-build"))
    return env


def _build(final: Path, group: BinaryGroup, log=None) -> None:
    go = _go()
    if not go:
        raise RuntimeError(f"the Go toolchain is needed to build {', '.join(group.binaries)}")
    root = final.parent
    for stale in root.glob(f"{final.name}.tmp-*"):  # from a crashed build; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f"{final.name}.tmp-{os.getpid()}"
    log_path = root / f"{final.name}.log"
    times = {}
    out = open(log_path, "w")
    try:
        (tmp / "bin").mkdir(parents=True)
        for module, packages in group.modules.items():
            src = tmp / "src" / module
            src.mkdir(parents=True)
            for name in ("go.mod", "go.sum"):
                shutil.copyfile(RECIPE / module / name, src / name)
            argv = ["nice", "-n", "10", go, "build", "-trimpath", "-buildvcs=false",
                    f"-ldflags={group.ldflags[module]}", "-o", str(tmp / "bin") + "/", *packages]
            started = time.monotonic()
            out.write(f"+ (cd {src} && {' '.join(argv)})\n")
            out.flush()
            if log:
                log(f"building {module}: {' '.join(p.rsplit('/', 1)[-1] for p in packages)}")
            done = subprocess.run(argv, cwd=src, env=_go_env(src), stdout=out,
                                  stderr=subprocess.STDOUT)
            times[module] = round(time.monotonic() - started, 1)
            out.write(f"{module}: {times[module]} s\n")
            out.flush()
            if done.returncode:
                out.close()
                tail = "".join(open(log_path).readlines()[-30:])
                raise RuntimeError(f"building {module} failed (log {log_path}):\n{tail}")
        if (tmp / "bin" / "server").exists():  # go.etcd.io/etcd/server/v3 builds as "server"
            (tmp / "bin" / "server").rename(tmp / "bin" / "etcd")
        shutil.rmtree(tmp / "src")
        (tmp / "recipe.json").write_text(json.dumps({
            "key": recipe_key(group), **group.versions, "seconds": times,
            "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }, indent=2) + "\n")
        if final.exists():  # an older recipe: running clusters keep their open binaries
            old = root / f"{final.name}.tmp-old-{os.getpid()}"
            final.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(final)
    finally:
        if not out.closed:
            out.close()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def pin(log=print, modules=None) -> None:
    """Regenerate kube_build/MODULE/go.mod and go.sum (every module's by default) from the
    versions above (go mod tidy)."""
    go = _go()
    if not go:
        raise RuntimeError("no Go toolchain")
    staging = KUBE_VERSION.replace("v1.", "v0.", 1)
    mods = {
        "kube": ("gitops-ansible-lab/kube", "1.24.0", "godebug default=go1.24\n\n",
                 f"k8s.io/kubernetes {KUBE_VERSION}",
                 "replace (\n" + "".join(f"\tk8s.io/{m} => k8s.io/{m} {staging}\n"
                                         for m in STAGING_MODULES) + ")\n"),
        "etcd": ("gitops-ansible-lab/etcd", "1.26.0", "",
                 f"go.etcd.io/etcd/server/v3 {ETCD_VERSION}", ""),
        "kwok": ("gitops-ansible-lab/kwok", "1.26.0", "", f"sigs.k8s.io/kwok {KWOK_VERSION}", ""),
        "helm": ("gitops-ansible-lab/helm", "1.26.0", "", f"{_HELM_PKG} {HELM_VERSION}", ""),
    }
    packages = {m: p for group in GROUPS for m, p in group.modules.items()}
    unknown = set(modules or ()) - set(mods)
    if unknown:
        raise ValueError(f"pin: no module {', '.join(sorted(unknown))} in {RECIPE} "
                         f"(expected one of {', '.join(mods)})")
    for module in modules or mods:
        path, go_version, godebug, require, replace = mods[module]
        tools = "".join(f"\t{p}\n" for p in packages[module])
        text = (f"// Generated by `python -m lab.kube pin`: the recipe of the {module} "
                f"binaries.\nmodule {path}\n\ngo {go_version}\n\n{godebug}require {require}\n\n"
                f"tool (\n{tools})\n" + (f"\n{replace}" if replace else ""))
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "go.mod").write_text(text)
            log(f"go mod tidy: {module}")
            subprocess.run([go, "mod", "tidy"], cwd=tmp, check=True,
                           env=dict(_go_env(Path(tmp)), GOFLAGS=""))
            dest = RECIPE / module
            dest.mkdir(parents=True, exist_ok=True)
            for name in ("go.mod", "go.sum"):
                shutil.copyfile(Path(tmp, name), dest / name)


# ---------------------------------------------------------------------------------------------
# certificates

def _pki(directory: Path, name: str) -> dict[str, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    until = now + datetime.timedelta(days=3650)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def subject(cn, org=None):
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    def write_key(k, path):
        path.write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        path.chmod(0o600)

    ca_key = key()
    ca_name = subject(f"lab-ca-{name}")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(until)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))

    def leaf(cn, org, usage, sans=None):
        k = key()
        b = (x509.CertificateBuilder().subject_name(subject(cn, org)).issuer_name(ca_name)
             .public_key(k.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now).not_valid_after(until)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                          content_commitment=False, data_encipherment=False,
                                          key_agreement=False, key_cert_sign=False,
                                          crl_sign=False, encipher_only=False,
                                          decipher_only=False), critical=True)
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                 ca_key.public_key()), critical=False))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return k, b.sign(ca_key, hashes.SHA256())

    service_ip = next(ipaddress.ip_network(SERVICE_CIDR).hosts())
    serving_key, serving = leaf("kube-apiserver", None, ExtendedKeyUsageOID.SERVER_AUTH, [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(service_ip),
        x509.DNSName("localhost"), x509.DNSName("kubernetes"),
        x509.DNSName("kubernetes.default"), x509.DNSName("kubernetes.default.svc"),
        x509.DNSName("kubernetes.default.svc.cluster.local")])
    admin_key, admin = leaf("lab-admin", "system:masters", ExtendedKeyUsageOID.CLIENT_AUTH)
    sa_key = key()

    files = {name: directory / name for name in (
        "ca.crt", "ca.key", "apiserver.crt", "apiserver.key", "admin.crt", "admin.key",
        "sa.key", "sa.pub")}
    pem = serialization.Encoding.PEM
    files["ca.crt"].write_bytes(ca.public_bytes(pem))
    write_key(ca_key, files["ca.key"])
    files["apiserver.crt"].write_bytes(serving.public_bytes(pem))
    write_key(serving_key, files["apiserver.key"])
    files["admin.crt"].write_bytes(admin.public_bytes(pem))
    write_key(admin_key, files["admin.key"])
    write_key(sa_key, files["sa.key"])
    files["sa.pub"].write_bytes(sa_key.public_key().public_bytes(
        pem, serialization.PublicFormat.SubjectPublicKeyInfo))
    return files


# ---------------------------------------------------------------------------------------------
# clusters

def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort: stop() still ends them
        pass


def kubectl_path() -> str | None:
    """$KUBECTL, else kubectl from KUBEBUILDER_ASSETS, else kubectl on PATH.

    When the kubectl on PATH is the Google Cloud SDK's version dispatcher (the project's
    machines have one, with kubectl.1.27 ... kubectl.1.33 beside it), the newest of those
    within the supported skew (+-1 minor) of KUBE_VERSION is used directly: the dispatcher
    picks by a guess of its own, and runs `version` as 1.32 against a 1.34 server."""
    if os.environ.get("KUBECTL"):
        return os.environ["KUBECTL"]
    env = os.environ.get("KUBEBUILDER_ASSETS")
    if env and os.access(Path(env, "kubectl"), os.X_OK):
        return str(Path(env, "kubectl"))
    found = shutil.which("kubectl")
    if not found:
        return None
    minor = int(_MINOR)
    versioned = []
    for sibling in Path(found).resolve().parent.glob("kubectl.1.*"):
        suffix = sibling.name.rsplit(".", 1)[1]
        if suffix.isdigit() and abs(int(suffix) - minor) <= 1 and os.access(sibling, os.X_OK):
            versioned.append((int(suffix), str(sibling)))
    return max(versioned)[1] if versioned else found


class KubeCluster:
    def __init__(self, workdir, name: str, nodes: int = 1, assets: KubeAssets | None = None,
                 cache_dir=None):
        if not (0 < len(name) <= 30 and name.replace("-", "").isalnum() and name.islower()
                and not name.startswith("-")):
            raise ValueError(f"cluster name {name!r}: 1-30 lowercase letters, digits and '-'")
        self.workdir = Path(workdir).resolve()
        self.name, self.nodes = name, nodes
        self._assets, self._cache = assets, cache_dir
        self.kubeconfig = self.workdir / "kubeconfig"
        self.server = ""
        self.pki: dict[str, Path] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.start_seconds: float | None = None  # start() to nodes Ready
        self.timings: dict[str, float] = {}       # seconds from start() to each milestone

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> "KubeCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = START_TIMEOUT) -> "KubeCluster":
        started = time.monotonic()
        assets = self._assets or ensure_assets(self._cache)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki = _pki(self.workdir / "pki", self.name)
        for attempt in range(3):  # a free port can be taken between probe and bind
            etcd_port, peer_port, api_port, sched_port = free_ports(4)
            self.server = f"https://127.0.0.1:{api_port}"
            write_kubeconfig(self.kubeconfig, [self])
            shutil.rmtree(self.workdir / "etcd", ignore_errors=True)
            self._spawn("etcd", [
                assets.bin["etcd"], "--name", "lab", "--data-dir", str(self.workdir / "etcd"),
                "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
                "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
                "--initial-cluster", f"lab=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync", "--log-level", "warn", "--quota-backend-bytes", "2147483648"])
            p = self.pki
            self._spawn("kube-apiserver", [
                assets.bin["kube-apiserver"], f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                f"--secure-port={api_port}", "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1", f"--cert-dir={self.workdir / 'pki'}",
                f"--tls-cert-file={p['apiserver.crt']}",
                f"--tls-private-key-file={p['apiserver.key']}",
                f"--client-ca-file={p['ca.crt']}",
                f"--service-account-key-file={p['sa.pub']}",
                f"--service-account-signing-key-file={p['sa.key']}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=RBAC", "--allow-privileged=true",
                "--endpoint-reconciler-type=none",  # 127.0.0.1 is not a valid endpoint IP
                "--enable-priority-and-fairness=false", "--profiling=false"])
            try:
                self._wait(lambda: self._get("/readyz") == 200, started + timeout, "/readyz")
                self.timings["readyz"] = round(time.monotonic() - started, 2)
                break
            except _PortTaken:
                self._kill_all()
                if attempt == 2:
                    raise
        kc = str(self.kubeconfig)
        self._spawn("kube-controller-manager", [
            assets.bin["kube-controller-manager"], f"--kubeconfig={kc}",
            "--leader-elect=false", "--secure-port=0", f"--root-ca-file={p['ca.crt']}",
            f"--service-account-private-key-file={p['sa.key']}",
            "--use-service-account-credentials=false", "--kube-api-qps=200",
            "--kube-api-burst=400", "--concurrent-deployment-syncs=10",
            "--concurrent-replicaset-syncs=10"])
        self._spawn("kube-scheduler", [
            assets.bin["kube-scheduler"], f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--leader-elect=false", f"--secure-port={sched_port}", "--bind-address=127.0.0.1",
            "--kube-api-qps=200", "--kube-api-burst=400"])
        self._spawn("kwok", [
            assets.bin["kwok"], f"--kubeconfig={kc}", f"--config={KWOK_STAGES}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={'='.join(NODE_ANNOTATION)}",
            f"--cidr={POD_CIDR}", "--node-lease-duration-seconds=40"])
        for i in range(1, self.nodes + 1):
            self._post("/api/v1/nodes", self._node(f"{self.name}-node-{i}"))
        self._wait(self._nodes_ready, started + timeout, "nodes Ready (kwok)")
        self.start_seconds = self.timings["nodes_ready"] = round(time.monotonic() - started, 2)
        return self

    def stop(self) -> None:
        self._kill_all()

    def kill(self, name: str = "kube-apiserver") -> int:
        """SIGKILL one of the cluster's processes, as a crash would; etcd's data stays.
        Its pid."""
        proc = self.procs[name]
        proc.kill()
        proc.wait()
        return proc.pid

    def restart(self, name: str = "kube-apiserver", timeout: float = START_TIMEOUT) -> None:
        """Start a killed process again with the same flags (ports, data); for the API
        server, wait until it answers /readyz."""
        proc = self.procs[name]
        if proc.poll() is None:
            raise RuntimeError(f"{self.name}: {name} is still running (pid {proc.pid})")
        proc.log.close()
        self._spawn(name, proc.argv)
        if name == "kube-apiserver":
            self._wait(lambda: self._get("/readyz") == 200, time.monotonic() + timeout,
                       "/readyz after a restart")

    def _kill_all(self) -> None:
        for name in reversed(list(self.procs)):  # kwok ... etcd: dependants first
            proc = self.procs.pop(name)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            proc.log.close()

    def _spawn(self, name: str, argv: list) -> None:
        log = open(self.workdir / f"{name}.log", "ab")
        proc = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, cwd=self.workdir,
                                preexec_fn=_die_with_parent)
        proc.log, proc.argv = log, argv
        self.procs[name] = proc  # a restarted one keeps its place: stop() order holds

    def _wait(self, ready, deadline: float, what: str) -> None:
        while True:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    tail = self.log_tail(name)
                    if "address already in use" in tail:
                        raise _PortTaken(tail)
                    raise RuntimeError(f"{self.name}: {name} exited with {proc.returncode} "
                                       f"while waiting for {what}:\n{tail}")
            try:
                if ready():
                    return
            except (OSError, http.client.HTTPException, ValueError):
                pass
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n}.log\n{self.log_tail(n, 10)}" for n in self.procs)
                raise TimeoutError(f"{self.name}: no {what} in time\n{logs}")
            time.sleep(0.05)

    def log_tail(self, name: str, lines: int = 25) -> str:
        try:
            return "".join((self.workdir / f"{name}.log").read_text(
                errors="replace").splitlines(True)[-lines:])
        except OSError:
            return ""

    # -- the API, without kubectl (start() needs it before and faster than a kubectl run) -----
    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki["ca.crt"]))
        ctx.load_cert_chain(str(self.pki["admin.crt"]), str(self.pki["admin.key"]))
        return ctx

    def request(self, method: str, path: str, body=None) -> tuple[int, dict | str]:
        """(status, decoded JSON or text) of one API request as the cluster admin."""
        port = int(self.server.rsplit(":", 1)[1])
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=self._ssl(), timeout=10)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            text = resp.read().decode(errors="replace")
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text
        finally:
            conn.close()

    def _get(self, path: str) -> int:
        return self.request("GET", path)[0]

    def _post(self, path: str, body: dict) -> None:
        status, answer = self.request("POST", path, body)
        if status not in (200, 201, 409):
            raise RuntimeError(f"{self.name}: POST {path}: {status} {answer}")

    def _node(self, name: str) -> dict:
        return {"apiVersion": "v1", "kind": "Node", "metadata": {
            "name": name, "annotations": {NODE_ANNOTATION[0]: NODE_ANNOTATION[1]},
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "type": "kwok"}},
            "status": {"allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                       "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"}}}

    def _nodes_ready(self) -> bool:
        status, nodes = self.request("GET", "/api/v1/nodes")
        ready = [n for n in nodes.get("items", []) if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in n.get("status", {}).get("conditions", []))]
        return status == 200 and len(ready) >= self.nodes

    # -- kubectl --------------------------------------------------------------------------------
    def kubectl(self, *args, input: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess:
        binary = kubectl_path()
        if not binary:
            raise RuntimeError("kubectl not found (PATH, $KUBECTL or KUBEBUILDER_ASSETS)")
        argv = [binary, f"--kubeconfig={self.kubeconfig}", f"--context={self.name}",
                *[str(a) for a in args]]
        done = subprocess.run(argv, input=input, capture_output=True, text=True,
                              timeout=timeout)
        if check and done.returncode:
            raise AssertionError(f"{self.name}: kubectl {' '.join(map(str, args))}: exit "
                                 f"{done.returncode}\nstdout:\n{done.stdout}\n"
                                 f"stderr:\n{done.stderr}")
        return done

    def apply(self, manifest: str, *extra) -> subprocess.CompletedProcess:
        """kubectl apply --server-side of YAML text (field manager: lab)."""
        return self.kubectl("apply", "--server-side", "--field-manager=lab", *extra, "-f", "-",
                            input=manifest)


class _PortTaken(RuntimeError):
    pass


def write_kubeconfig(path, clusters: list[KubeCluster], current: str | None = None) -> Path:
    """A kubeconfig (JSON, which is YAML) with a context per cluster, named after it."""
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "current-context": current or clusters[0].name,
        "clusters": [{"name": c.name, "cluster": {
            "server": c.server, "certificate-authority-data": b64(c.pki["ca.crt"])}}
            for c in clusters],
        "users": [{"name": c.name, "user": {
            "client-certificate-data": b64(c.pki["admin.crt"]),
            "client-key-data": b64(c.pki["admin.key"])}} for c in clusters],
        "contexts": [{"name": c.name, "context": {"cluster": c.name, "user": c.name}}
                     for c in clusters],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    tmp.chmod(0o600)
    tmp.rename(path)
    return path


# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.kube",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the cached binaries (once per machine)")
    build.add_argument("--force", action="store_true", help="rebuild even when cached")
    build.add_argument("--cache",
                       help="default: $GITOPS_LAB_CACHE or /var/cache/gitops-ansible-lab")
    pinning = sub.add_parser("pin", help="regenerate kube_build/*/go.mod, go.sum from the "
                             "versions")
    pinning.add_argument("modules", nargs="*", metavar="MODULE",
                         help="a directory of kube_build/ (default: all)")
    run = sub.add_parser("run", help="start clusters and keep them until interrupted")
    run.add_argument("--dir", required=True)
    run.add_argument("names", nargs="+")
    args = parser.parse_args(argv)

    if args.command == "build":
        started = time.monotonic()
        def log(message):
            print(message, file=sys.stderr, flush=True)
        assets = ensure_assets(args.cache, force=args.force, log=log)
        helm = ensure_helm(args.cache, log, force=args.force)
        print(json.dumps({"source": assets.source, "seconds": round(time.monotonic() - started, 1),
                          "bin": {**{k: str(v) for k, v in assets.bin.items()},
                                  "helm": str(helm)}}, indent=2))
    elif args.command == "pin":
        pin(modules=args.modules)
    else:
        clusters = [KubeCluster(Path(args.dir, n), n) for n in args.names]
        try:
            for c in clusters:
                c.start()
            merged = write_kubeconfig(Path(args.dir, "kubeconfig"), clusters)
            print(json.dumps({"kubeconfig": str(merged),
                              "clusters": {c.name: {"server": c.server,
                                                    "seconds": c.start_seconds}
                                           for c in clusters}}, indent=2), flush=True)
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        finally:
            for c in clusters:
                c.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
