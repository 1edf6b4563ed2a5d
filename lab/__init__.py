"""Test lab: bare hosts (sshd in network namespaces on overlay root filesystems).

rootfs.py    ensure_rootfs(): the cached debootstrap rootfs, the hosts' shared lower layer
aptproxy.py  the HTTP proxy through which apt inside the hosts reaches the Debian mirror
hosts.py     HostLab: bridge, namespaces, overlays, sshd, keys, known_hosts
fixtures.py  pytest fixtures lab_rootfs and host_lab
__main__.py  python -m lab up|down: a detached lab for demos
"""
