"""``python -m bench [--quick] [--only NAME …]``: run the measurements, write the report.

Measurements, in order: ack (callback acknowledgement), crediting, end_to_end (with memory),
daraja_calls, growth, census (statements per top-up). The full run stays under 10 minutes,
``--quick`` under 2; a measurement that fails is reported as failed and the others still run.
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

import psutil

from bench import analysis, report
from bench.harness import Bench, utc_now_iso
from bench.machine import NCPU, CpuMeter, loadavg

ORDER = ["ack", "crediting", "end_to_end", "daraja_calls", "growth", "cpu", "census"]
QUICK_ORDER = [name for name in ORDER if name != "census"]
HERE = Path(__file__).resolve().parent
# the budget: a measurement is not started past these many seconds
BUDGET_S = {False: 520, True: 100}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller loads, under 2 minutes")
    parser.add_argument("--only", nargs="+", choices=ORDER, help="run only these")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy passes")
    parser.add_argument("--profile", action="store_true",
                        help="run the py-spy passes in quick mode too")
    parser.add_argument("--report-dir", default=str(HERE),
                        help="where report.json, report.md and the plots go (default bench/)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    names = args.only or (QUICK_ORDER if args.quick else ORDER)
    out = HERE / "out"
    shutil.rmtree(out, ignore_errors=True)
    bench = Bench(out, quick=args.quick,
                  profile=not args.no_profile and (args.profile or not args.quick))
    started = time.monotonic()
    results = {"run": {"started_at": utc_now_iso(), "quick": args.quick, "cpus": NCPU,
                       "memory_gb": psutil.virtual_memory().total / 2**30,
                       "loadavg_start": loadavg(), "load_generator": bench.load.generator,
                       "code": bench.notes_for_code()},
               "measurements": {}}
    print(f"bench: {'quick' if args.quick else 'full'} run of {', '.join(names)}; "
          f"load generator: {bench.load.generator}; load average {loadavg()}", flush=True)
    meter = CpuMeter(bench.roles, interval=1.0)
    try:
        with meter:
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
                    results["measurements"][name] = module.run(bench)
                except Exception as exc:  # noqa: BLE001 - report it, run the rest
                    traceback.print_exc()
                    results["measurements"][name] = {"title": name,
                                                     "error": f"{type(exc).__name__}: {exc}"}
                results["measurements"][name]["seconds"] = round(time.monotonic() - t0, 1)
                (out / "results-so-far.json").write_text(json.dumps(results, default=str))
                print(f"bench: {name} done in {time.monotonic() - t0:.0f} s", flush=True)
    finally:
        bench.close()
    machine = meter.summary()
    results["run"].update(seconds=round(time.monotonic() - started, 1), loadavg_end=loadavg(),
                          cpu_foreign_share=machine["cpu_foreign_share"],
                          cpu_s_by_role=machine["cpu_s_by_role"])
    results["analysis"] = analysis.explain(results["measurements"])
    changes = HERE / "CHANGES.md"
    if changes.exists():
        results["changes"] = [line for line in changes.read_text().splitlines()
                              if not line.startswith("#")]
    report.write(results, Path(args.report_dir))
    print(f"bench: wrote {args.report_dir}/report.md and report.json in "
          f"{time.monotonic() - started:.0f} s", flush=True)
    for measurement in results["measurements"].values():
        for goal in measurement.get("goals", []):
            print(f"  {'met    ' if goal['met'] else 'NOT MET'}  {goal['goal']}: {goal['value']}")
        if measurement.get("error"):
            print(f"  FAILED   {measurement['title']}: {measurement['error']}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
