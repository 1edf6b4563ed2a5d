"""The lab: real things for the tests, the benchmarks, `make demo` and molecule to run
against, on this machine. Not part of the product (not installed with it); used from the
checkout (`python -m lab ...`, `import lab.hosts`).

hosts.py      HostLab: bare hosts (systemd booted by systemd-nspawn in network namespaces,
              on overlay root filesystems, sshd as a service)
rootfs.py     ensure_rootfs(): the cached debootstrap rootfs, the hosts' shared lower layer
nodes.py      NodeLab: execution nodes, hosts with a cached runtime layer (the controller's
              Python, ansible-core and ansible-runner) for ansible-runner's worker
aptproxy.py   the HTTP proxy through which apt inside the hosts reaches the Debian mirror
gitserver.py  GitServers: bare repositories over file://, git daemon, SSH and HTTPS; WorkTree
kube.py       KubeCluster: etcd + kube-apiserver + controllers + kwok, binaries built once
guest.py      the cached guest image (qcow2, kernel, initrd) and per-VM seed disks
libvirt.py    VmLab: libvirtd, TCG guests reached over SSH on 127.0.0.1
galaxy.py     GalaxyServer: a real Galaxy-compatible server (Pulp with pulp_ansible) on loopback
collections.py  collections taken from the cached `ansible` wheel, and tarballs built of them
recorder.py   Recorder: an HTTP server that records requests (stand-in for SaaS APIs)
cache.py      the per-machine cache and build_once(), which builds each entry once
system.py     commands run and checked, free ports, waiting for a port or an SSH banner
fixtures.py   the pytest fixtures, one lab per xdist worker (tests/conftest.py imports them)
demo.py       `make demo`: the built-in example converged on 3 bare hosts
__main__.py   python -m lab up|down: a detached lab for demos and molecule
"""
