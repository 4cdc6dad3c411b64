"""`tunebench env ...`: record, show and create the pinned environments (see envs.py)."""

from __future__ import annotations

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


def add_parsers(sub) -> None:
    env = sub.add_parser("env", help="the pinned Python environments (containers/locks/)")
    env_sub = env.add_subparsers(dest="env_command", required=True)
    p = env_sub.add_parser("record", help="record the lock this environment was installed from")
    p.add_argument("stack", choices=locks.STACKS)
    p.add_argument("lock")
    p.set_defaults(func=cmd_record)
    p = env_sub.add_parser("show", help="this environment's lock and its drift from it")
    p.set_defaults(func=cmd_show)
    p = env_sub.add_parser(
        "create", help="create a stack's environment in its own folder (cached by lock hash)"
    )
    p.add_argument("stack", choices=locks.STACKS)
    p.add_argument("--variant", choices=("cpu", "cuda"), default=locks.default_variant())
    p.add_argument("--lock", help="another lock file than containers/locks/<stack>-<variant>.txt")
    p.set_defaults(func=cmd_create)
