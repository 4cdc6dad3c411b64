"""`tunebench env ...`: record, show and create the pinned environments (see locks.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tunebench.envs import locks

PROJECT = Path(__file__).resolve().parents[3]


def cmd_record(args) -> int:
    entry = locks.record_lock(args.stack, Path(args.lock))
    digest, pins = entry["lock_sha256"][:12], len(entry["pins"])
    print(f"{args.stack}: {entry['lock']} sha256 {digest}, {pins} pins")
    return 0


def cmd_show(args) -> int:
    print(json.dumps(locks.current(), indent=1))
    return 0


def cmd_create(args) -> int:
    lock = Path(args.lock) if args.lock else locks.lock_file(PROJECT, args.stack, args.variant)
    folder = locks.ensure(args.stack, lock)
    print(folder)
    return 0


def add_parsers(sub, formatter=argparse.HelpFormatter) -> None:
    env = sub.add_parser(
        "env",
        help="the pinned Python environments (containers/locks/): show, create",
        description="the pinned Python environments (containers/locks/)",
        formatter_class=formatter,
    )
    env_sub = env.add_subparsers(dest="env_command", required=True, metavar="{show,create}")
    # No help line: `make env` records the lock it installed, a user does not.
    p = env_sub.add_parser("record", description="record the lock this environment came from")
    p.add_argument("stack", choices=locks.STACKS, help="the stack the lock is for")
    p.add_argument("lock", help="the lock file it was installed from")
    p.set_defaults(func=cmd_record)
    p = env_sub.add_parser("show", help="this environment's lock and its drift from it")
    p.set_defaults(func=cmd_show)
    p = env_sub.add_parser(
        "create",
        help="create a stack's environment in its own folder (cached by lock hash)",
        formatter_class=formatter,
    )
    p.add_argument("stack", choices=locks.STACKS, help="the stack to create")
    p.add_argument(
        "--variant",
        choices=("cpu", "cuda"),
        default=locks.default_variant(),
        help="torch's CPU or CUDA build",
    )
    p.add_argument("--lock", help="another lock file than containers/locks/STACK-VARIANT.txt")
    p.set_defaults(func=cmd_create)
