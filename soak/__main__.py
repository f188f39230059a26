"""``python -m soak [--seed S] [--n N] [--faults F] [--rate R]`` (``make soak SEED=… N=…``).

Prints the seed first (a random one when none is given), then progress, then the summary;
exits 0 when every invariant held, 1 when one did not, 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import logging
import secrets
import signal
import sys
import time
from pathlib import Path

from soak.plan import DEFAULT_N, DEFAULT_RATE, FAULT_KINDS, default_faults, make_plan


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak", description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=None,
                        help="the seed of the plan (default: a random one, printed first)")
    parser.add_argument("--n", type=_positive_int, default=DEFAULT_N,
                        help=f"top-ups (default {DEFAULT_N})")
    parser.add_argument("--faults", type=int, default=None,
                        help="faults injected (default: one per 300 top-ups, at least 4)")
    parser.add_argument("--rate", type=_positive_float, default=DEFAULT_RATE,
                        help=f"top-ups a second (default {DEFAULT_RATE:g})")
    parser.add_argument("--fault-kinds", type=_names, default=FAULT_KINDS,
                        help="the kinds of fault, comma-separated (default: "
                             f"{','.join(FAULT_KINDS)})")
    parser.add_argument("--leave-out", type=_names, default=(),
                        help="simulator behaviours the plan does not use, comma-separated "
                             "(e.g. query_pending)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the processes' logs and the summary go "
                             "(default var/soak/seed-SEED-TIME, new for every run)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbelow(1_000_000)
    if args.faults is not None and args.faults < 0:
        parser.error("--faults cannot be negative")
    try:   # the plan's own checks, before anything starts
        make_plan(seed, 1, faults=0, fault_kinds=args.fault_kinds, left_out=args.leave_out)
    except ValueError as exc:
        parser.error(str(exc))
    # imported after the arguments are read: a bad one is refused without starting anything
    from soak.runner import Options, run
    # a new directory every run: a server started on an old one would find its data
    workdir = args.workdir or Path("var/soak") / f"seed-{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    options = Options(seed=seed, n=args.n, rate=args.rate, workdir=workdir,
                      faults=default_faults(args.n) if args.faults is None else args.faults,
                      fault_kinds=args.fault_kinds, left_out=args.leave_out)
    # SIGTERM or SIGHUP (a stopped job, a closed terminal) unwinds the run like Ctrl-C, so
    # that everything it started is stopped: the servers it restarts during faults are not
    # tied to its life by the kernel (topupctl/devservers.py does that only from the main thread)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop)
    workdir.mkdir(parents=True, exist_ok=True)
    _simulator_log_to(workdir / "simulator.log")
    try:
        outcome = run(options, say=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print("soak: stopped; everything it started has been stopped", flush=True)
        return 1
    return 0 if outcome.passed else 1


def _stop(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _simulator_log_to(path: Path) -> None:
    """The simulator's warnings (a callback the gateway did not take, as when PostgreSQL is
    down) go to a file of the run's, not between the progress lines."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    simulator_log = logging.getLogger("simulator")
    simulator_log.addHandler(handler)
    simulator_log.propagate = False


if __name__ == "__main__":
    sys.exit(main())
