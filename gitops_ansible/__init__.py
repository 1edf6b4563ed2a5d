"""gitops-ansible: converge an estate (Kubernetes clusters, VMs, bare hosts) on a Git repository.

The library is the product; ``cli`` is a thin layer on top. One module per stage of the
cycle: ``source`` -> ``inventory``/``plan`` -> ``execute`` -> ``store`` -> ``report``,
tied together by ``reconcile``.
"""
__version__ = "0.1.0"
