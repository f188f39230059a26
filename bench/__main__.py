"""``python -m bench [--quick] [--only NAME …]``: measure the gateway against its performance
floors and write ``bench/report.md`` and ``bench/report.json``.

Measurements, in order: ack (callback acknowledgement against a trivial Flask endpoint),
crediting (one hot wallet against pgbench on the same SQL), end_to_end (throughput, the
median of three bursts, then request → credit latency paced at half of it), daraja_calls (per settled top-up, all
callbacks and 20% dropped), growth (1,000 → 1,000,000 ledger entries). Every ratio is taken
between figures measured side by side in this run. The full run stays under 10 minutes,
``--quick`` under 3; a measurement that fails is reported as failed and the others still run.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from bench import report
from bench.harness import Bench, utc_now_iso
from bench.machine import NCPU, Machine, loadavg, memory_gb

ORDER = ["ack", "crediting", "end_to_end", "daraja_calls", "growth"]
HERE = Path(__file__).resolve().parent
# a measurement is not started past these many seconds (quick mode: True)
BUDGET_S = {False: 480, True: 150}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller loads, under 3 minutes")
    parser.add_argument("--only", nargs="+", choices=ORDER, help="run only these")
    parser.add_argument("--report-dir", default=str(HERE),
                        help="where report.json and report.md go (default bench/)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    names = args.only or ORDER
    out = HERE / "out"
    shutil.rmtree(out, ignore_errors=True)
    bench = Bench(out, quick=args.quick)
    started = time.monotonic()
    results = {"run": {"started_at": utc_now_iso(), "quick": args.quick, "cpus": NCPU,
                       "memory_gb": round(memory_gb(), 1), "loadavg_start": loadavg(),
                       "load_generator": bench.load.generator,
                       "code": bench.notes_for_code()},
               "measurements": {}}
    print(f"bench: {'quick' if args.quick else 'full'} run of {', '.join(names)}; "
          f"load generator: {bench.load.generator}; load average {loadavg()}", flush=True)
    machine = Machine()
    try:
        with machine:
            bench.start()
            for name in names:
                if time.monotonic() - started > BUDGET_S[args.quick]:
                    results["measurements"][name] = {"title": name,
                                                     "error": "skipped: out of time budget"}
                    continue
                t0 = time.monotonic()
                print(f"bench: {name} …", flush=True)
                try:
                    module = importlib.import_module(f"bench.{name}")
                    with Machine() as during:
                        results["measurements"][name] = module.run(bench)
                    results["measurements"][name]["machine"] = during.summary()
                except Exception as exc:  # noqa: BLE001 - report it, run the rest
                    traceback.print_exc()
                    results["measurements"][name] = {"title": name,
                                                     "error": f"{type(exc).__name__}: {exc}"}
                results["measurements"][name]["seconds"] = round(time.monotonic() - t0, 1)
                (out / "results-so-far.json").write_text(json.dumps(results, default=str))
                print(f"bench: {name} done in {time.monotonic() - t0:.0f} s", flush=True)
    finally:
        bench.close()
    results["run"].update(seconds=round(time.monotonic() - started, 1), loadavg_end=loadavg(),
                          machine=machine.summary())
    results["floors"] = report.floors(results)
    report.write(results, Path(args.report_dir))
    print(f"bench: wrote {args.report_dir}/report.md and report.json in "
          f"{time.monotonic() - started:.0f} s", flush=True)
    for floor in results["floors"]:
        print(f"  {'met    ' if floor['met'] else 'NOT MET'}  {floor['measure']}: "
              f"{floor['figure']} (floor {floor['floor']})")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
