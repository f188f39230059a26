"""The report: ``bench/report.json`` (every figure) and ``bench/report.md`` (readable, with
plots), written from the results of one run."""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def write(results: dict, out_dir: Path = HERE) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    plots = _plots(results, out_dir)
    (out_dir / "report.md").write_text(markdown(results, plots))


# --- plots -------------------------------------------------------------------------------------

def _plots(results: dict, out_dir: Path) -> dict:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    plots = {}
    ack = results["measurements"].get("ack")
    if ack and "curves" in ack and len(ack["curves"]["callback"]) > 1:
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
        for name, style in (("trivial", "o--"), ("callback", "s-")):
            rows = [r for r in ack["curves"][name] if not r.get("repeat")]
            label = "trivial Flask endpoint" if name == "trivial" else "Daraja callback endpoint"
            left.plot([r["connections"] for r in rows], [r["rps"] for r in rows], style,
                      label=label)
            right.plot([r["connections"] for r in rows], [r["p99_ms"] for r in rows], style,
                       label=f"{label}, p99")
            right.plot([r["connections"] for r in rows], [r["p50_ms"] for r in rows], style,
                       alpha=0.4, label=f"{label}, p50")
        left.set_xscale("log", base=2)
        left.set_xlabel("concurrent connections (wrk)")
        left.set_ylabel("requests / s")
        left.set_title("Throughput against load")
        right.set_xscale("log", base=2)
        right.set_xlabel("concurrent connections (wrk)")
        right.set_ylabel("latency, ms")
        right.set_yscale("log")
        right.set_title("Latency against load")
        left.legend(fontsize=8)
        right.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "report-ack.png", dpi=90)
        plt.close(fig)
        plots["ack"] = "report-ack.png"
    e2e = results["measurements"].get("end_to_end")
    if e2e and "rows" in e2e:
        rows = e2e["rows"]
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        xs = [r["processes"] for r in rows]
        ax.plot(xs, [r["burst"]["topups_per_s"] or 0 for r in rows], "s-",
                label="gateway: top-ups credited / s")
        ax.plot(xs, [(r["noop"].get("messages_per_s") or 0) / r["messages_per_topup"]
                     for r in rows], "o--",
                label=f"Dramatiq no-op ceiling ({rows[0]['messages_per_topup']} messages a top-up)")
        ax.axhline(300, color="grey", linestyle=":", label="goal: 300 top-ups / s")
        ax.set_xticks(xs)
        ax.set_xlabel(f"worker processes ({rows[0]['threads']} threads each)")
        ax.set_ylabel("top-ups / s")
        ax.set_yscale("log")
        ax.set_title("End to end against the broker's own ceiling")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "report-end-to-end.png", dpi=90)
        plt.close(fig)
        plots["end_to_end"] = "report-end-to-end.png"
    return plots


# --- markdown ----------------------------------------------------------------------------------

def _f(value, digits=1, unit=""):
    if value is None:
        return "–"
    if isinstance(value, float):
        text = f"{value:,.{digits}f}"
    else:
        text = f"{value:,}" if isinstance(value, int) else str(value)
    return text + unit


def _cpu(by_role: dict, top: int = 5) -> str:
    items = sorted(by_role.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{role} {ms:.2f}" for role, ms in items) if items else "–"


def _machine(m: dict) -> str:
    if not m:
        return ""
    return (f"load {m['loadavg_start'][0]:.2f} → {m['loadavg_end'][0]:.2f}, CPU busy "
            f"{m['cpu_busy_share']:.0%}, of which other people's processes "
            f"{m['cpu_foreign_share']:.0%} of the machine")


def _profile(profile: dict | None, what: str) -> list[str]:
    if not profile or not profile.get("samples"):
        return []
    lines = [f"py-spy on {what} ({profile['samples']} samples of running or runnable "
             "threads; idle threads, blocked on a socket or a lock, are not counted):", "",
             "| where (innermost frame) | share |", "|---|---|"]
    lines += [f"| {name} | {share:.0%} |" for name, share in profile["categories"][:9]]
    lines += ["", "Our functions, inclusive: " + "; ".join(
        f"`{name.split(' (')[0]}` {share:.0%}" for name, share in profile["ours_inclusive"][:8]),
        ""]
    return lines


def markdown(results: dict, plots: dict) -> str:
    run = results["run"]
    m = results["measurements"]
    out = ["# `make bench`: the gateway against the machine's own limits", ""]
    shared = run["cpu_foreign_share"] is not None and run["cpu_foreign_share"] >= 0.05
    out += [
        f"Run {run['started_at']} for {run['seconds']:.0f} s, "
        f"{'QUICK mode (smaller loads; figures indicative)' if run['quick'] else 'full mode'}, "
        f"on {run['cpus']} CPUs and {run['memory_gb']:.0f} GB. Code: `{run['code']['head']}`"
        + (f" plus uncommitted changes in {run['code']['uncommitted_paths_outside_bench']} "
           "files of the shared working tree" if run['code']['uncommitted_paths_outside_bench']
           else "") + ".",
        f"Load average {run['loadavg_start']} at the start, {run['loadavg_end']} at the end. "
        + (f"**The machine was shared**: other people's processes (test suites) used "
           f"{run['cpu_foreign_share']:.0%} of its CPU during the run, so absolute figures are "
           "low and noisy; the ratios, taken side by side in the same run, are the figures to "
           "read." if shared else
           f"Other processes used {run['cpu_foreign_share']:.0%} of the CPU during the run."),
        f"Load generator: {run['load_generator']}. Every server on 127.0.0.1, started by the "
        "bench: redis-server, PostgreSQL 15 (fsync on), the Daraja simulator, gunicorn "
        "(`--workers 2 --threads 4`), `dramatiq workers`.", ""]

    out += ["## Goals", "", "| measurement | goal | figure | met |", "|---|---|---|---|"]
    for key, measurement in m.items():
        for goal in measurement.get("goals", []):
            out.append(f"| {measurement['title']} | {goal['goal']} | {_f(goal['value'], 3)} | "
                       f"{'yes' if goal['met'] else '**no**'} |")
        if measurement.get("error"):
            out.append(f"| {key} | – | failed: {measurement['error'][:80]} | **no** |")
    out.append("")

    if "ack" in m and "curves" in m["ack"]:
        a = m["ack"]
        h = a["headline"]
        out += ["## 1. Callback acknowledgement", "",
                "The real `POST /daraja/callback/<token>` (store the body durably, enqueue "
                "`apply_callback`, answer) against a trivial Flask endpoint that parses the "
                "same JSON and answers, both under the same gunicorn; wrk sends paid callbacks, "
                "each with its own CheckoutRequestID. The workers are not running.", "",
                "| connections | endpoint | requests/s | p50 ms | p99 ms | CPU ms per request "
                "(by process) | machine |", "|---|---|---|---|---|---|---|"]
        for i, row in enumerate(a["curves"]["callback"]):
            triv = a["curves"]["trivial"][i]
            for name, r in (("trivial", triv), ("callback", row)):
                out.append(f"| {r['connections']}{' (again)' if r.get('repeat') else ''} | "
                           f"{name} | {_f(r['rps'])} | "
                           f"{_f(r['p50_ms'])} | {_f(r['p99_ms'])} | "
                           f"{_cpu(r.get('cpu_ms_per_request', {}))} | "
                           f"{_machine(r.get('machine'))} |")
        if h.get("rps_ratios"):
            out += ["", f"At {a['settings']['headline_connections']} connections the two "
                    f"endpoints ran back to back {h['pairs']} times; the ratios are the medians "
                    "of the pairs' (throughput "
                    + ", ".join(f"{x:.2f}" for x in h["rps_ratios"]) + "; p99 "
                    + ", ".join(f"{x:.2f}" for x in h["p99_ratios"]) + "), the other figures "
                    f"medians too: the callback endpoint answers **{_f(h['callback_rps'])}/s "
                    f"against {_f(h['trivial_rps'])}/s (ratio {h['rps_ratio']:.2f})**, p99 "
                    f"{_f(h['callback_p99_ms'])} ms against {_f(h['trivial_p99_ms'])} ms "
                    f"(ratio {h['p99_ratio']:.2f}).", ""]
        else:   # reports made before the pairs: each endpoint's faster run
            out += ["", f"At {a['settings']['headline_connections']} connections (of its two "
                    "runs, each endpoint's faster one, in full mode) the callback "
                    f"endpoint answers **{_f(h['callback_rps'])}/s against "
                    f"{_f(h['trivial_rps'])}/s (ratio {h['rps_ratio']:.2f})**, p99 "
                    f"{_f(h['callback_p99_ms'])} ms against {_f(h['trivial_p99_ms'])} ms "
                    f"(ratio {h['p99_ratio']:.2f}).", ""]
        if plots.get("ack"):
            out += [f"![callback acknowledgement]({plots['ack']})", ""]
        out += _profile(a.get("profile"), "the API's gunicorn workers under the callback load")

    if "crediting" in m and "rows" in m["crediting"]:
        out += _crediting(m["crediting"])

    if "end_to_end" in m and "rows" in m["end_to_end"]:
        e = m["end_to_end"]
        hooks = e["settings"]["webhooks"]
        out += ["## 3. End to end (and 6. memory)", "",
                f"`POST /v1/topups` (wrk, 16 connections, {e['settings']['topups_per_burst']:,} "
                "top-ups, one wallet through "
                f"{e['settings']['api_keys']} API keys) → push → simulator → callback → credit"
                + (" → `wallet.top_up` webhook delivered to a local receiver" if hooks else "")
                + f". Throughput from the first request to the last credit; latency at half "
                "that rate (paced), from the top-up's creation to its ledger entry. "
                f"Simulator: {e['settings']['simulator']}.", "",
                "| worker processes | top-ups/s | request→credit p50 / p99 ms (paced at) |"
                + (" request→webhook p50 / p99 ms |" if hooks else "")
                + " no-op Dramatiq msgs/s | gateway msgs/s (ratio) | CPU ms per top-up |"
                " peak RSS API / worker process |",
                "|---|---|---|" + ("---|" if hooks else "") + "---|---|---|---|"]
        for r in e["rows"]:
            p, b = r["paced"], r["burst"]
            line = (f"| {r['processes']} × {r['threads']} | {_f(b['topups_per_s'])} | "
                    f"{_f(p['credit_latency_ms']['p50'])} / {_f(p['credit_latency_ms']['p99'])} "
                    f"(at {_f(p['offered_per_s'])}/s) |")
            if hooks:
                lat = p["webhooks"].get("latency_ms", {})
                line += f" {_f(lat.get('p50'))} / {_f(lat.get('p99'))} |"
            line += (f" {_f(r['noop'].get('messages_per_s'))} | {_f(r['messages_per_s'])} "
                     f"({_f(r['ratio_to_noop'], 3)}) | {_cpu(b['cpu_ms_per_topup'])} | "
                     f"{_f(r['memory']['api_process_peak_rss_mb'])} / "
                     f"{_f(r['memory']['worker_process_peak_rss_mb'])} MiB |")
            out.append(line)
        out += [""]
        idle = [r.get("idle_cpu_ms_per_s_per_process") for r in e["rows"]]
        if any(idle):
            out += ["With nothing to do, a worker process used "
                    + ", ".join(f"{_f(x)}" for x in idle) + " ms of CPU per second (polling "
                    "its queues, at most every `dramatiq_worker_timeout` = 200 ms, "
                    "heartbeats), for "
                    + ", ".join(str(r["processes"]) for r in e["rows"]) + " worker processes.",
                    ""]
        noop_cpu = [sum(r["noop"].get("cpu_ms_per_message", {}).values()) for r in e["rows"]]
        if any(noop_cpu):
            out += [f"Dramatiq's own cost, from the no-op runs: "
                    f"{', '.join(f'{x:.2f}' for x in noop_cpu)} ms of CPU per message "
                    f"(workers and Redis), for {', '.join(str(r['processes']) for r in e['rows'])} "
                    "worker processes.", ""]
        incomplete = [r for r in e["rows"] if not r["burst"]["complete"]]
        if incomplete:
            out += ["Not every top-up settled within the deadline in: " + ", ".join(
                f"{r['processes']} processes ({r['burst']['pending']} pending)"
                for r in incomplete), ""]
        early = sum(r["burst"]["callbacks_first_kept_as_orphans"] for r in e["rows"])
        if early:
            out += [f"{early} callbacks arrived before the worker had recorded the push's "
                    "CheckoutRequestID (the simulator calls back at once): each was kept as an "
                    "orphan payment, then re-applied by the push task and credited once.", ""]
        if plots.get("end_to_end"):
            out += [f"![end to end]({plots['end_to_end']})", ""]

        prof = next((r.get("profile") for r in e["rows"] if r.get("profile")), None)
        out += _profile(prof, "the worker processes (2 × 4) during a burst of top-ups")

    if "daraja_calls" in m and "rows" in m["daraja_calls"]:
        d = m["daraja_calls"]
        out += ["## 4. Daraja calls per settled top-up", "",
                f"Counted by the simulator (`/__sim/stats`). STK_QUERY_AFTER_S = "
                f"{d['settings']['stk_query_after_s']} s in both runs.", "",
                "| callbacks dropped | top-ups | settled | OAuth | STK push | STK query | "
                "calls per settled top-up |", "|---|---|---|---|---|---|---|"]
        for r in d["rows"]:
            out.append(f"| {r['dropped_callbacks']:.0%} | {r['topups']:,} | {r['settled']:,} | "
                       f"{r['oauth']} | {r['stkpush']} | {r['stkquery']} | "
                       f"**{_f(r['calls_per_settled'], 4)}** |")
        out.append("")

    if "growth" in m and "credit" in m["growth"]:
        g = m["growth"]
        out += ["## 5. Growth", ""]
        if g["settings"].get("note"):
            out += [f"*{g['settings']['note']}.*", ""]
        out += ["| | 1,000 entries | " + f"{g['headline']['large_entries']:,} entries | ratio |",
                "|---|---|---|---|",
                f"| credit, p50 / p99 ms | {_f(g['credit']['small']['p50_ms'], 2)} / "
                f"{_f(g['credit']['small']['p99_ms'], 2)} | {_f(g['credit']['large']['p50_ms'], 2)}"
                f" / {_f(g['credit']['large']['p99_ms'], 2)} | {_f(g['ratios']['credit_p50'], 2)}"
                f" / {_f(g['ratios']['credit_p99'], 2)} |"]
        for path in g["reads"]["small"]:
            small, large = g["reads"]["small"][path], g["reads"]["large"][path]
            out.append(f"| `{path}`, p50 / p99 ms | {_f(small['p50_ms'], 2)} / "
                       f"{_f(small['p99_ms'], 2)} "
                       f"| {_f(large['p50_ms'], 2)} / {_f(large['p99_ms'], 2)} | "
                       f"{_f(g['ratios'][path + '_p50'], 2)} / "
                       f"{_f(g['ratios'][path + '_p99'], 2)} |")
        out += ["", "Bulk load: " + "; ".join(
            f"{v['entries']:,} entries in {v['seconds']} s ({', '.join(v['tables'])})"
            for v in g["loaded"].values()), ""]

    if "cpu" in m and "units" in m["cpu"]:
        c = m["cpu"]
        out += ["## CPU per unit of work", "",
                "Each unit run one at a time in the bench's own process (Flask's test client for "
                "the API; for the workers, each message handled as a Dramatiq worker thread "
                "handles it: the broker's middleware, the actor and its JSON log lines), "
                "against the same PostgreSQL, Redis and simulator. CPU time is this process's "
                "only, so other people's load hardly moves it; it leaves out gunicorn, "
                "Dramatiq's fetch and ack, and the servers' own work. The profile is cProfile "
                "on CPU time.", "",
                "| unit | CPU ms | wall ms | where the CPU goes |", "|---|---|---|---|"]
        for name, u in c["units"].items():
            groups = ", ".join(f"{g} {share:.0%}" for g, share in u["groups"][:5])
            out.append(f"| {name} | {_f(u['cpu_ms'], 2)} | {_f(u['wall_ms'], 2)} | {groups} |")
        out += ["", "<details><summary>Functions with the most CPU of their own</summary>", ""]
        for name, u in c["units"].items():
            out.append(f"- {name}: " + "; ".join(
                f"`{fn}` {share:.0%}" for fn, share in u["functions"][:8]))
        out += ["", "</details>", ""]

    if "census" in m and "statements" in m["census"]:
        s = m["census"]
        out += ["## Statements per top-up", "",
                f"One top-up, request to credit{' and webhook' if s['webhooks'] else ''}, "
                f"sends **{s['total']} statements** to PostgreSQL: " + "; ".join(
                    f"{proc}: " + ", ".join(
                        f"{k} {v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
                    for proc, kinds in s["by_process"].items()) + ".", "",
                "<details><summary>In order</summary>", "", "| process | statement |", "|---|---|"]
        out += [f"| {p} | `{sql.replace('|', '/')}` |" for p, sql in s["statements"]]
        out += ["", "</details>", ""]

    if results.get("analysis"):
        out += ["## Where the time goes", ""] + results["analysis"] + [""]
    if results.get("changes"):
        out += ["## Changes made to our code from these figures", ""] + results["changes"] + [""]
    return "\n".join(out) + "\n"


def _crediting(c: dict) -> list[str]:
    rounds = any(r.get("rounds") for r in c["rows"])
    out = ["## 2. Crediting one hot wallet", "",
           "Paid callbacks stored for pushed top-ups, one `apply_callback` message each, "
           "applied by `dramatiq workers` into one wallet; pgbench runs the credit "
           "transaction (conditional top-up UPDATE, wallet UPDATE, ledger INSERT) on the "
           "same tables and another hot wallet with as many clients as the workers have "
           "threads. The workers' rate is taken from the first credit to the last.", ""]
    if rounds:
        settings = c["settings"]
        warm, seconds = settings["warm_up"], settings["pgbench_seconds"]
        out += ["Side by side in one run, configuration by configuration: first a warm-up on "
                f"each side that is not counted ({warm['workers_credits']:,} credits by the "
                f"workers, then pgbench for {warm['pgbench_seconds']} s: the first pass after "
                "the database's creation pays for cold caches and plans), then alternating "
                f"rounds of a workers pass and a pgbench run (`-T {seconds}`), "
                "each pass on fresh rows of its own. A workers pass is sized from the workers' "
                f"rate so far to last about {seconds} s too, so that both sides "
                "face the shared machine for the same stretch of time. Before every pass, "
                "warm-up included, the tables are vacuumed and analysed and a CHECKPOINT "
                "taken, so each pass starts from the same state. **The ratio is the median of "
                "the rounds' ratios** (a workers pass against the pgbench run right after it), "
                "not the best round; the table's other figures are medians over the rounds, "
                "figure by figure. pgbench's tps leaves out its connections' set-up, as the "
                "workers' rate leaves out their start.", ""]
    pg_cpu = any(r["pgbench"].get("cpu_ms_per_transaction") for r in c["rows"])
    out += ["| workers | credits/s | pgbench tps | ratio | worker CPU ms per credit "
            "(by process) |" + (" pgbench CPU ms per transaction (by process) |" if pg_cpu
                                else "")
            + " connections: avg number in each state (workers / pgbench) |",
            "|---|---|---|---|---|" + ("---|" if pg_cpu else "") + "---|"]
    for r in c["rows"]:
        states = _states(r["workers"]["connections"], r["pgbench"]["connections"])
        spread = (f" ({_f(r['ratio_range'][0], 3)}–{_f(r['ratio_range'][1], 3)} over "
                  f"{len(r['rounds'])} rounds)" if r.get("ratio_range") else "")
        out.append(f"| {r['processes']} × {r['threads']} | "
                   f"{_f(r['workers']['credits_per_s'])} | {_f(r['pgbench']['tps'])} | "
                   f"**{_f(r['ratio'], 3)}**{spread} | {_cpu(r['workers']['cpu_ms_per_credit'])} | "
                   + (f"{_cpu(r['pgbench'].get('cpu_ms_per_transaction', {}))} | " if pg_cpu
                      else "") + f"{states} |")
    if rounds:
        out += ["", "Every round, in the order run (others' CPU: the share of the machine that "
                "other people's processes took during the pass, workers / pgbench):", "",
                "| workers | round | workers pass | credits/s | pgbench tps "
                "| ratio | others' CPU |", "|---|---|---|---|---|---|---|"]
        for r in c["rows"]:
            passes = [("warm-up, not counted", {**r["warm_up"], "ratio": None})]
            passes += [(str(i), rnd) for i, rnd in enumerate(r["rounds"], 1)]
            for label, rnd in passes:
                w, p = rnd["workers"], rnd["pgbench"]
                out.append(
                    f"| {r['processes']} × {r['threads']} | {label} | "
                    f"{_f(w['credited'])} credits in {_f(w['span_s'], 2)} s | "
                    f"{_f(w['credits_per_s'])} | {_f(p['tps'])} | {_f(rnd['ratio'], 3)} | "
                    f"{_share(w.get('machine'))} / {_share(p.get('machine'))} |")
    for r in c["rows"]:
        prepared = r.get("pgbench_prepared")
        if prepared and prepared.get("tps"):
            out += ["", f"For reference, not the goal's baseline: at {r['processes']} × "
                    f"{r['threads']}, pgbench with its statements prepared on the server "
                    f"(`-M prepared`, as the workers' statements are; its default mode parses "
                    f"and plans each one) ran {_f(prepared['tps'])} tps, one run after the "
                    f"rounds: the workers' median rate is {_f(prepared['ratio'], 3)} of that."]
    ok = c["correctness"]
    out += ["", f"Every credit once: balance {ok['balance_cents']:,} cents = sum of "
            f"{ok['entries']:,} entries, one per succeeded top-up: "
            f"{'yes' if ok['ok'] else '**NO**'}.", ""]
    out += _profile(c.get("profile"), "the worker processes while they credit")
    return out


def _share(machine: dict | None) -> str:
    share = (machine or {}).get("cpu_foreign_share")
    return "–" if share is None else f"{share:.0%}"


def _states(workers: dict, pgbench: dict) -> str:
    keys = ["waiting for a row lock", "idle in transaction (client's turn)",
            "running a statement"]
    return "; ".join(f"{k.split(' (')[0]} {workers.get(k, 0):.1f} / {pgbench.get(k, 0):.1f}"
                     for k in keys)
