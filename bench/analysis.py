"""Where the time goes, in words, from the figures of one run (profiles, CPU by process,
what the database connections were doing). Only what the figures show is said."""
from __future__ import annotations

from bench.machine import NCPU


def explain(measurements: dict) -> list[str]:
    lines: list[str] = []
    ack = measurements.get("ack", {})
    if ack.get("curves"):
        head = ack["settings"]["headline_connections"]
        cb = next(r for r in ack["curves"]["callback"] if r["connections"] == head)
        tr = next(r for r in ack["curves"]["trivial"] if r["connections"] == head)
        cb_total = sum(cb["cpu_ms_per_request"].values())
        tr_total = sum(tr["cpu_ms_per_request"].values())
        lines.append(
            f"- **Callback acknowledgement.** A callback costs {cb_total:.2f} ms of CPU across "
            f"processes ({_roles(cb['cpu_ms_per_request'])}) against {tr_total:.2f} ms for the "
            f"trivial endpoint ({_roles(tr['cpu_ms_per_request'])}): on {NCPU} cores that alone "
            f"caps it near {NCPU * 1000 / cb_total:,.0f}/s against {NCPU * 1000 / tr_total:,.0f}/s."
            + _top(ack.get("profile")))
    cred = measurements.get("crediting", {})
    if cred.get("rows"):
        # the goal's configuration (the last row in reports made before the rounds)
        head = cred.get("headline", {}).get("concurrency")
        r = next((row for row in cred["rows"] if row["concurrency"] == head), cred["rows"][-1])
        states = r["workers"]["connections"]
        pg = r["pgbench"]["connections"]
        lock = states.get("waiting for a row lock", 0)
        idle_tx = states.get("idle in transaction (client's turn)", 0)
        pg_idle_tx = pg.get("idle in transaction (client's turn)", 0)
        lines.append(
            f"- **Crediting.** Every credit updates the same wallet row, so credits queue on its "
            f"row lock, held from the wallet UPDATE to the COMMIT. With {r['concurrency']} "
            f"worker threads, on average {lock:.1f} connections were waiting for that lock and "
            f"{idle_tx:.1f} sat idle inside a transaction (the client's turn: Python building the "
            f"next statement or waiting for the GIL or a core, the lock held); pgbench's clients, "
            f"answering in microseconds, sat idle in transaction {pg_idle_tx:.1f} "
            f"on average. A worker spends {sum(r['workers']['cpu_ms_per_credit'].values()):.1f} ms "
            f"of CPU per credit across processes ({_roles(r['workers']['cpu_ms_per_credit'])})."
            + _pgbench_cpu(r) + _top(cred.get("profile")) + _spread(r))
    e2e = measurements.get("end_to_end", {})
    if e2e.get("rows"):
        best = max(e2e["rows"], key=lambda row: row["burst"]["topups_per_s"] or 0)
        cpu = best["burst"]["cpu_ms_per_topup"]
        total = sum(cpu.values())
        lines.append(
            f"- **End to end.** One top-up costs {total:.1f} ms of CPU across every process "
            f"({_roles(cpu)}): {NCPU} cores allow at most {NCPU * 1000 / total:,.0f} top-ups/s "
            f"at that cost, whatever the concurrency; 300 top-ups/s would need at most "
            f"{NCPU * 1000 / 300:.1f} ms. Dramatiq itself is not the limit: its "
            f"no-op ceiling with the same processes is "
            f"{(best['noop'].get('messages_per_s') or 0) / best['messages_per_topup']:,.0f} "
            f"top-ups/s ({best['messages_per_topup']} messages each)."
            + _gateway_share(cpu)
            + (" Idle, a worker process still used "
               f"{best['idle_cpu_ms_per_s_per_process']:.1f} ms "
               "of CPU a second (polling its queues every 200 ms at most, heartbeats)."
               if best.get("idle_cpu_ms_per_s_per_process") else ""))
    cpu = measurements.get("cpu", {})
    if cpu.get("units"):
        units = cpu["units"]
        flow = [name for name in units if "baseline" not in name]
        total = sum(units[name]["cpu_ms"] for name in flow)
        peewee = sum(units[name]["cpu_ms"] * dict(units[name]["groups"]).get(
            "peewee (SQL building, pool, rows)", 0) for name in flow)
        lines.append(
            "- **Python per top-up.** The gateway's own Python for one top-up, unit by unit "
            "in one process (the workers' units through their middleware, with their log lines): "
            + ", ".join(f"{name} {units[name]['cpu_ms']:.2f} ms" for name in flow)
            + f"; {total:.1f} ms in all, of which Peewee building statements and rows "
            f"{peewee:.1f} ms ({peewee / total:.0%}). The trivial Flask endpoint costs "
            f"{units.get('trivial endpoint (baseline)', {}).get('cpu_ms', 0):.2f} ms the same way.")
    census = measurements.get("census", {})
    if census.get("by_process"):
        pings = sum(kinds.get("SELECT 1 (pool check)", 0)
                    for kinds in census["by_process"].values())
        begins = sum(kinds.get("BEGIN", 0) for kinds in census["by_process"].values())
        lines.append(
            f"- **Round trips.** One top-up sends {census['total']} statements to PostgreSQL"
            + (f", {begins} of them `BEGIN` (Peewee opens every transaction with its own round "
               f"trip)" if begins else ", none of them `BEGIN`: each write is one statement, "
               "its own transaction")
            + (f" and {pings} `SELECT 1` (the connection pool checking a connection each time a "
               f"request or message takes one)" if pings else "") + ".")
    return lines


# The gateway's own processes; the rest (the simulator standing in for Daraja, the load
# generator, the webhook receiver, the harness) share the cores only because this is a bench.
GATEWAY_ROLES = ("api", "workers", "postgres", "redis", "scheduler")


def _gateway_share(cpu_by_role: dict) -> str:
    own = sum(ms for role, ms in cpu_by_role.items() if role in GATEWAY_ROLES)
    rest = sum(cpu_by_role.values()) - own
    if not own or rest <= 0:
        return ""
    return (f" Of it, the gateway's own processes ({', '.join(GATEWAY_ROLES)}) take {own:.1f} ms"
            f" and the bench's stand-ins for the outside world {rest:.1f} ms: alone on {NCPU}"
            f" cores the gateway would be capped near {NCPU * 1000 / own:,.0f} top-ups/s.")


def _roles(by_role: dict) -> str:
    items = sorted(by_role.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{role} {ms:.2f}" for role, ms in items[:5])


def _pgbench_cpu(row: dict) -> str:
    ours = sum(row["workers"]["cpu_ms_per_credit"].values())
    theirs = sum(row["pgbench"].get("cpu_ms_per_transaction", {}).values())
    if not ours or not theirs:
        return ""
    return (f" pgbench's side spends {theirs:.1f} ms per transaction "
            f"({_roles(row['pgbench']['cpu_ms_per_transaction'])}): per credit, the workers' "
            f"side takes {ours / theirs:.1f} × its CPU.")


def _spread(row: dict) -> str:
    ratios = [rnd["ratio"] for rnd in row.get("rounds", []) if rnd["ratio"] is not None]
    if len(ratios) < 2:
        return ""
    tps = [rnd["pgbench"]["tps"] for rnd in row["rounds"] if rnd["pgbench"]["tps"]]
    rates = [rnd["workers"]["credits_per_s"] for rnd in row["rounds"]
             if rnd["workers"]["credits_per_s"]]
    return (f" Over {len(ratios)} alternating rounds the ratio ran from {min(ratios):.3f} to "
            f"{max(ratios):.3f} (median {row['ratio']:.3f}); pgbench alone from "
            f"{min(tps):,.0f} to {max(tps):,.0f} tps and the workers from {min(rates):,.0f} to "
            f"{max(rates):,.0f} credits/s.")


def _top(profile: dict | None) -> str:
    if not profile or not profile.get("categories"):
        return ""
    top = ", ".join(f"{name} {share:.0%}" for name, share in profile["categories"][:4])
    return f" py-spy: {top}."
