"""``python -m ghm.cluster``: list, start and stop the warm local Ray heads; make a cluster's TLS certificates."""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

from ghm.cluster.local_head import WarmHead, all_heads
from ghm.cluster.tls import issue, ray_tls_environment


def list_heads() -> None:
    heads = all_heads()
    print(f"{'key':<14}{'state':<10}{'address':<22}{'CPUs':>5}  {'up':>8}  {'idle timeout':>12}  python")
    for head in heads:
        record = head.record()
        if record is None:
            print(f"{head.folder.name:<14}{'stopped':<10}")
            continue
        print(f"{head.folder.name:<14}{'running':<10}{record.address:<22}{record.num_cpus:>5}  {time.time() - record.started_at:>7.0f}s  "
              f"{head.idle_timeout_s():>11g}s  {record.python}")
    if not heads:
        print("(no warm head has run here)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ghm.cluster", description=__doc__)
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every warm head of this user: state, address, CPUs, age, idle timeout, Python")
    start = actions.add_parser("start", help="start this environment's warm head (or find it) and print how to reach it")
    start.add_argument("--idle-timeout", type=float, default=600.0, help="seconds without a sweep before it stops (default 600)")
    start.add_argument("--num-cpus", type=int, help="CPUs it offers to trials (default: this machine's)")
    stop = actions.add_parser("stop", help="stop this environment's warm head now (its own processes only)")
    stop.add_argument("--all", action="store_true", help="every warm head of this user, whatever its environment")
    certs = actions.add_parser("certs", help="a cluster's CA (made once) and a certificate for a node, for Ray's TLS between hosts")
    certs.add_argument("--out", type=Path, default=Path(".certs"), help="the folder (default .certs/, which .gitignore covers)")
    certs.add_argument("--name", default="node", help="the certificate's file name: <out>/<name>.crt and .key (default: node)")
    certs.add_argument("--host", action="append", default=[], help="a name or address the node is reached at (repeat)")
    args = parser.parse_args(argv)
    if args.action == "list":
        list_heads()
    elif args.action == "certs":
        issued = issue(args.out, args.name, [*args.host, "localhost", "127.0.0.1"])
        print(f"CA {args.out / 'ca.crt'} (its key ca.key stays here: keep the folder private, never commit it)\n"
              f"node certificate {issued.certificate}, key {issued.key}, for {', '.join([*args.host, 'localhost', '127.0.0.1'])}")
        print("\n".join(f"{k}={v}" for k, v in ray_tls_environment(args.out, args.name).items()))
    elif args.action == "start":
        head = WarmHead()
        record, started = head.acquire(args.idle_timeout, args.num_cpus)
        print(head.describe(record, started))
        print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in head.environment(record).items()))
        print("# then `ray status` shows it; sweeps without an address join it by themselves")
    else:
        heads = all_heads() if args.all else [WarmHead()]
        for head in heads:
            print(f"{head.folder.name}: {'stopped' if head.stop() else 'was not running'}")


if __name__ == "__main__":
    main()
