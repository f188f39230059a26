"""The report: ``bench/report.json`` (every figure) and ``bench/report.md`` (the floors in one
table at the top, then each measurement's figures), written from the results of one run."""
from __future__ import annotations

import json
from pathlib import Path

# The floors in the order the team's issue lists them; a floor whose measurement failed or
# did not run is reported as not met, never left out.
FLOORS = [
    ("end_to_end", "end_to_end", "end to end, everything on one machine", "≥ 100 top-ups/s"),
    ("ack", "ack_throughput", "callback acknowledgement vs the trivial Flask endpoint, "
                              "16 connections: throughput", "≥ 0.3×"),
    ("ack", "ack_p99", "callback acknowledgement vs the trivial Flask endpoint, "
                       "16 connections: p99", "≤ 3×"),
    ("crediting", "crediting", "credits into one hot wallet vs pgbench, same SQL, default mode",
     "≥ 0.35×"),
    ("end_to_end", "latency", "request → credit p99, paced at half the saturated rate", "≤ 1 s"),
    ("daraja_calls", "daraja_calls_0", "Daraja calls per settled top-up, all callbacks",
     "≤ 1.01"),
    ("daraja_calls", "daraja_calls_20", "Daraja calls per settled top-up, 20% of callbacks "
                                        "dropped", "≤ 1.3"),
    ("growth", "growth_credit", "credit latency, 1,000 → 1,000,000 entries", "≤ 1.2×"),
    ("growth", "growth_wallet", "wallet read latency, 1,000 → 1,000,000 entries", "≤ 1.2×"),
]


def floors(results: dict) -> list[dict]:
    """Every floor of the issue, with its figure from this run (or why there is none)."""
    rows = []
    for measurement, floor_id, measure, floor in FLOORS:
        found = results["measurements"].get(measurement, {})
        mine = next((f for f in found.get("floors", []) if f.get("id", measurement) == floor_id),
                    None)
        if mine is None:
            why = found.get("error") or "not run"
            rows.append({"id": floor_id, "measure": measure, "floor": floor, "figure": None,
                         "met": False, "note": why})
        else:
            rows.append({**mine, "id": floor_id})
    return rows


def write(results: dict, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out_dir / "report.md").write_text(markdown(results))


# --- markdown ----------------------------------------------------------------------------------

def _f(value, digits=1, unit=""):
    if value is None:
        return "–"
    if isinstance(value, float):
        text = f"{value:,.{digits}f}"
    else:
        text = f"{value:,}" if isinstance(value, int) else str(value)
    return text + unit


def _machine(m: dict | None) -> str:
    if not m:
        return "–"
    return (f"load {m['loadavg_start'][0]:.2f} → {m['loadavg_end'][0]:.2f}; others' CPU "
            f"{m['cpu_others_share']:.0%}")


def _figure(floor: dict) -> str:
    if floor["figure"] is None:
        return "–"
    unit = floor.get("unit")
    if unit == "s":
        return f"{floor['figure']:.3f} s"
    if "top-ups/s" in floor["floor"]:
        return f"{floor['figure']:,.1f} top-ups/s"
    if "×" in floor["floor"]:
        return f"{floor['figure']:.3f}×"
    return f"{floor['figure']:.4f}"


def markdown(results: dict) -> str:
    run = results["run"]
    m = results["measurements"]
    machine = run.get("machine") or {}
    out = ["# `make bench`: the performance floors", ""]
    code = run["code"]
    out += [
        f"Run {run['started_at']} for {run['seconds']:.0f} s, "
        f"{'QUICK mode (smaller loads; figures indicative only)' if run['quick'] else 'full mode'}"
        f", on {run['cpus']} CPUs and {run['memory_gb']:.0f} GB. Code: `{code['head']}`"
        + (f" plus uncommitted changes in {code['uncommitted_paths_outside_bench']} files "
           "outside bench/" if code["uncommitted_paths_outside_bench"] else "") + ".",
        f"Load average {run['loadavg_start']} at the start, {run['loadavg_end']} at the end; "
        f"other people's processes took {machine.get('cpu_others_share', 0):.0%} of the "
        "machine's CPU during the run (each measurement's share is in its section).",
        f"Load generator: {run['load_generator']}. Every server on 127.0.0.1, started by the "
        "bench: redis-server, PostgreSQL 15 (fsync on), the Daraja simulator, gunicorn "
        "(`--workers 2 --threads 4`), `dramatiq workers --processes 2 --threads 4`, and for end to "
        "end and the Daraja calls `topupctl scheduler`.", ""]

    out += ["## Floors", "", "| measure | floor | figure | met |", "|---|---|---|---|"]
    for floor in results["floors"]:
        note = f" ({floor['note']})" if floor.get("note") else ""
        out.append(f"| {floor['measure']}{note} | {floor['floor']} | {_figure(floor)} | "
                   f"{'yes' if floor['met'] else '**no**'} |")
    out.append("")

    sections = [("end_to_end", _end_to_end), ("ack", _ack), ("crediting", _crediting),
                ("daraja_calls", _daraja_calls), ("growth", _growth)]
    for key, section in sections:
        measurement = m.get(key)
        if not measurement:
            continue
        if measurement.get("error"):
            out += [f"## {measurement['title']}", "", f"Failed: `{measurement['error']}`", ""]
            continue
        out += section(measurement)
        out += [f"Machine during this measurement ({measurement['seconds']:.0f} s): "
                f"{_machine(measurement.get('machine'))}.", ""]
    return "\n".join(out) + "\n"


def _end_to_end(e: dict) -> list[str]:
    s, p = e["saturated"], e["paced"]
    rounds = e.get("saturated_rounds") or [s]
    settings = e["settings"]
    out = ["## End to end, and request → credit latency", "",
           f"`POST /v1/topups` (wrk, {settings['burst_connections']} connections, "
           f"{settings['topups_per_burst']:,} top-ups, one wallet through "
           f"{settings['api_keys']} API keys) → push → simulator → callback → credit → "
           "`wallet.top_up` webhook delivered to a local receiver. Throughput from the first "
           "top-up's creation to the last webhook delivered"
           + (f", in {len(rounds)} bursts one after the other; the floor reads the median "
              "burst" if len(rounds) > 1 else "")
           + ". Then requests paced at half that "
           f"rate for {settings['paced_seconds']} s ({settings['paced_connections']} "
           "connections): latency from the top-up's creation to its ledger entry. "
           f"Workers {settings['workers']}. Scheduler {settings.get('scheduler', '–')}. "
           f"Simulator: {settings['simulator']}.", "",
           "| load | top-ups | top-ups/s (to the webhook) | credits/s (to the credit) | "
           "request → credit p50 / p99 ms | request → webhook p50 / p99 ms | "
           "HTTP p50 / p99 ms | machine |", "|---|---|---|---|---|---|---|---|"]
    labelled = [(f"saturated, burst {i}" + (" (the median)" if r == s else "")
                 if len(rounds) > 1 else "saturated", r) for i, r in enumerate(rounds, 1)]
    labelled.append((f"paced at {_f(p['offered_per_s'])}/s ({_f(p['posted_per_s'])}/s sent)",
                     p))
    for label, r in labelled:
        credit, hooks = r["credit_latency_ms"], r["webhooks"]["latency_ms"]
        out.append(f"| {label} | {r['posted']:,} | {_f(r['topups_per_s'])} | "
                   f"{_f(r['credits_per_s'])} | {_f(credit['p50'])} / {_f(credit['p99'])} | "
                   f"{_f(hooks['p50'])} / {_f(hooks['p99'])} | {_f(r['load']['p50_ms'])} / "
                   f"{_f(r['load']['p99_ms'])} | {_machine(r.get('machine'))} |")
    incomplete = [label for label, r in labelled if not r["complete"]]
    if incomplete:
        out += ["", "Not every top-up settled within the deadline in: " + ", ".join(incomplete)]
    return out + [""]


def _ack(a: dict) -> list[str]:
    h = a["headline"]
    out = ["## Callback acknowledgement", "",
           "The real `POST /daraja/callback/<token>` (store the body durably, enqueue "
           "`apply_callback`, answer) against a trivial Flask endpoint that parses the same "
           f"JSON and answers, both under gunicorn {a['settings']['gunicorn']}; wrk sends paid "
           f"callbacks over {a['settings']['connections']} connections, each with its own "
           f"CheckoutRequestID, {a['settings']['seconds_per_run']} s a run. The workers are not "
           "running. The two endpoints ran back to back in each pair; the floors read the "
           "median of the pairs' ratios.", "",
           "| pair | endpoint | requests/s | p50 ms | p99 ms | throughput ratio | p99 ratio | "
           "machine |", "|---|---|---|---|---|---|---|---|"]
    for i, pair in enumerate(a["pairs"], 1):
        for name in ("trivial", "callback"):
            r = pair[name]
            ratios = (f"{_f(pair.get('rps_ratio'), 3)} | {_f(pair.get('p99_ratio'), 3)}"
                      if name == "callback" else " | ")
            out.append(f"| {i} | {name} | {_f(r['rps'])} | {_f(r['p50_ms'])} | "
                       f"{_f(r['p99_ms'])} | {ratios} | {_machine(r.get('machine'))} |")
    out += ["", f"Medians: throughput ratio **{h['rps_ratio']:.3f}**, p99 ratio "
            f"**{h['p99_ratio']:.3f}**."]
    if a.get("errors"):
        out += ["", f"Errors seen by the load generator: {a['errors']}"]
    return out + [""]


def _crediting(c: dict) -> list[str]:
    settings = c["settings"]
    h = c["headline"]
    warm = settings["warm_up"]
    out = ["## Crediting one hot wallet", "",
           "Stored paid callbacks for pushed top-ups, one `apply_callback` message each, "
           f"credited by `dramatiq workers` ({settings['workers']}) into one wallet, against "
           f"pgbench ({settings['pgbench_clients']} clients, {settings['pgbench_mode']} "
           "mode) running the credit's transaction as the gateway sends it (script below) on "
           "the same tables and another hot wallet. Side by side in alternating rounds: a "
           f"warm-up on each side not counted ({warm['workers_credits']} credits; pgbench "
           f"{warm['pgbench_seconds']} s), then {settings['rounds']} rounds of a workers pass "
           f"sized to last about {settings['pgbench_seconds']} s followed by pgbench "
           f"`-T {settings['pgbench_seconds']}`, each on fresh rows, the tables vacuumed and "
           "a CHECKPOINT taken before every pass. The floor reads the median of the rounds' "
           "ratios.", "",
           "| round | workers pass | credits/s | pgbench transactions | pgbench tps | ratio | "
           "others' CPU (workers / pgbench) |", "|---|---|---|---|---|---|---|"]
    passes = [("warm-up, not counted", {**c["warm_up"], "ratio": None})]
    passes += [(str(i), rnd) for i, rnd in enumerate(c["rounds"], 1)]
    for label, rnd in passes:
        w, p = rnd["workers"], rnd["pgbench"]
        out.append(f"| {label} | {w['credited']:,} credits in {_f(w['span_s'], 2)} s | "
                   f"{_f(w['credits_per_s'])} | {p['transactions']:,} | {_f(p['tps'])} | "
                   f"{_f(rnd['ratio'], 3)} | {_share(w)} / {_share(p)} |")
    ok = c["correctness"]
    out += ["", f"Medians: {_f(h['workers_credits_per_s'])} credits/s against "
            f"{_f(h['pgbench_tps'])} tps, ratio **{h['ratio']:.3f}**. Every credit once: "
            f"balance {ok['balance_cents']:,} cents = sum of {ok['entries']:,} entries, one per "
            f"succeeded top-up: {'yes' if ok['ok'] else '**NO**'}.", "",
            "<details><summary>The pgbench script</summary>", "", "```sql",
            settings["pgbench_script"].rstrip(), "```", "", "</details>"]
    return out + [""]


def _share(side: dict) -> str:
    share = (side.get("machine") or {}).get("cpu_others_share")
    return "–" if share is None else f"{share:.0%}"


def _daraja_calls(d: dict) -> list[str]:
    out = ["## Daraja calls per settled top-up", "",
           f"Counted by the simulator (`/__sim/stats`); {d['settings']['topups']:,} top-ups a "
           f"run, STK_QUERY_AFTER_S = {d['settings']['stk_query_after_s']} s in both runs.", "",
           "| callbacks dropped | top-ups | settled | OAuth | STK push | STK query | "
           "calls per settled top-up |", "|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        out.append(f"| {r['dropped_callbacks']:.0%} | {r['topups']:,} | {r['settled']:,} | "
                   f"{r['oauth']} | {r['stkpush']} | {r['stkquery']} | "
                   f"**{_f(r['calls_per_settled'], 4)}** |")
    return out + [""]


def _growth(g: dict) -> list[str]:
    large = g["settings"]["sizes"]["large"]
    out = ["## Growth", ""]
    if g["settings"].get("note"):
        out += [f"*{g['settings']['note']}.*", ""]
    out += ["The credit (`workers.tasks.apply_callback`, one at a time in the bench's process) "
            "and `GET /v1/wallet` (the API under gunicorn, one request at a time) against two "
            "databases, one with 1,000 ledger entries on the wallet and one with "
            f"{large:,}, in alternation so that both see the same machine.", "",
            f"| | 1,000 entries | {large:,} entries | ratio |", "|---|---|---|---|",
            f"| credit, p50 / p99 ms | {_f(g['credit']['small']['p50_ms'], 2)} / "
            f"{_f(g['credit']['small']['p99_ms'], 2)} | {_f(g['credit']['large']['p50_ms'], 2)}"
            f" / {_f(g['credit']['large']['p99_ms'], 2)} | {_f(g['ratios']['credit_p50'], 2)}"
            f" / {_f(g['ratios']['credit_p99'], 2)} |",
            f"| `GET /v1/wallet`, p50 / p99 ms | {_f(g['reads']['small']['p50_ms'], 2)} / "
            f"{_f(g['reads']['small']['p99_ms'], 2)} | {_f(g['reads']['large']['p50_ms'], 2)}"
            f" / {_f(g['reads']['large']['p99_ms'], 2)} | {_f(g['ratios']['wallet_p50'], 2)}"
            f" / {_f(g['ratios']['wallet_p99'], 2)} |", "",
            "Bulk load: " + "; ".join(f"{v['entries']:,} entries in {v['seconds']} s"
                                      for v in g["loaded"].values()) + "."]
    return out + [""]
