"""python -m lab up|down: a lab of bare hosts that outlives this command (for demos).

    python -m lab up --dir /var/tmp/gitops-ansible-demo --prefix gatdemo \\
        --subnet 198.51.100 --hosts demo-1,demo-2,demo-3
    python -m lab down --dir /var/tmp/gitops-ansible-demo

`up` builds the cached rootfs if needed, (re)starts the hosts with fresh filesystems (first
removing what a lab with the same prefix left running), waits until each has booted its
systemd and answers SSH, and returns; hosts get SUBNET.11, .12, ... in the order given; the
client key is DIR/id_ed25519, known hosts DIR/known_hosts, the state for `down` DIR/lab.json.
`down` stops everything `up` started.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .hosts import DEFAULT_SUBNET, HostLab


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the hosts, detached")
    up.add_argument("--dir", required=True, help="the lab's working directory")
    up.add_argument("--prefix", default="gatlab", help="names of interfaces and namespaces")
    up.add_argument("--subnet", default=DEFAULT_SUBNET, help="first three octets, like 198.51.100")
    up.add_argument("--hosts", required=True, help="comma-separated host names")
    up.add_argument("--cache", help="rootfs and package cache (default: $GITOPS_LAB_CACHE or "
                                    "/var/cache/gitops-ansible-lab)")
    down = sub.add_parser("down", help="stop what `up` started")
    down.add_argument("--dir", required=True)
    args = parser.parse_args(argv)

    if args.command == "up":
        names = [n.strip() for n in args.hosts.split(",") if n.strip()]
        lab = HostLab(args.dir, names, args.prefix, args.subnet, cache_dir=args.cache)
        started = time.monotonic()
        lab.start()
        print(json.dumps({"hosts": {n: h.address for n, h in lab.hosts.items()},
                          "vars": lab.inventory_vars(),
                          "seconds": round(time.monotonic() - started, 1)}, indent=2))
    else:
        try:
            lab = HostLab.from_state(args.dir)
        except FileNotFoundError:
            print(f"no lab state in {args.dir}: nothing to stop", file=sys.stderr)
            return 0
        lab.stop()
        print(f"stopped the lab in {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
