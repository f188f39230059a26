"""The benchmark's crediting measurement (bench/crediting.py): measured in alternating rounds
of workers and pgbench, reported as the median of the rounds' ratios with every round shown,
and reports made before the rounds still render."""
from __future__ import annotations

from bench import analysis, report
from bench.crediting import PASS_CREDITS, _pass_size, _row

CONNECTIONS = {"waiting for a row lock": 1.5, "running a statement": 0.6}


def workers_pass(rate, credited=3000, cpu=1.2, others=0.05):
    return {"credits": credited, "credited": credited, "span_s": round(credited / rate, 2),
            "credits_per_s": rate, "connections": CONNECTIONS,
            "machine": {"cpu_foreign_share": others},
            "cpu_ms_per_credit": {"workers": cpu, "postgres": 0.9}}


def pgbench_run(tps, others=0.05):
    return {"tps": tps, "latency_ms": 4.5, "seconds": 5, "connections": CONNECTIONS,
            "machine": {"cpu_foreign_share": others},
            "cpu_ms_per_transaction": {"postgres": 0.8, "pgbench": 0.2}}


def a_round(rate, tps, others=0.05):
    return {"workers": workers_pass(rate, others=others), "pgbench": pgbench_run(tps, others),
            "ratio": round(rate / tps, 3)}


def crediting(rows):
    head = rows[0]
    return {"title": "Crediting one hot wallet", "rows": rows,
            "settings": {"pgbench_seconds": 5,
                         "warm_up": {"workers_credits": 300, "pgbench_seconds": 1}},
            "correctness": {"balance_cents": 100, "sum_of_entries_cents": 100, "entries": 1,
                            "ok": True},
            "headline": {"concurrency": head["concurrency"], "ratio": head["ratio"]},
            "goals": [{"goal": "credits/s ≥ 0.5 × pgbench's", "value": head["ratio"],
                       "target": 0.5, "met": head["ratio"] >= 0.5}]}


def results(measurement):
    return {"run": {"started_at": "2026-11-29T09:00:00+00:00", "seconds": 100.0,
                    "quick": False, "cpus": 2, "memory_gb": 24.0,
                    "code": {"head": "abc1234", "uncommitted_paths_outside_bench": 0},
                    "loadavg_start": [1.0, 1.0, 1.0], "loadavg_end": [1.0, 1.0, 1.0],
                    "cpu_foreign_share": 0.02, "load_generator": "wrk"},
            "measurements": {"crediting": measurement}}


def rounds_row(processes, threads, figures):
    return _row(processes, threads, [a_round(rate, tps) for rate, tps in figures],
                workers_pass(400.0, credited=300), pgbench_run(1200.0))


def test_the_crediting_ratio_is_the_median_of_the_rounds_not_the_best():
    row = rounds_row(2, 4, [(900.0, 1500.0), (500.0, 1000.0), (400.0, 1000.0)])

    assert row["ratio"] == 0.5
    assert row["ratio_range"] == [0.4, 0.6]
    assert row["workers"]["credits_per_s"] == 500.0
    assert row["pgbench"]["tps"] == 1000.0
    assert row["workers"]["credited"] == 9000


def test_a_workers_pass_is_sized_to_last_as_long_as_a_pgbench_run():
    assert _pass_size([800.0], 5) == 4000
    assert _pass_size([300.0, 500.0, 2000.0], 3) == 1500
    assert _pass_size([100000.0], 5) == PASS_CREDITS[1]
    assert _pass_size([None], 5) == 2500


def test_the_report_shows_every_round_and_the_warm_up_as_not_counted():
    rows = [rounds_row(2, 4, [(900.0, 1500.0), (500.0, 1000.0), (400.0, 1000.0)]),
            rounds_row(1, 1, [(300.0, 600.0), (250.0, 500.0)])]

    text = report.markdown(results(crediting(rows)), {})

    assert ("| 2 × 4 | 500.0 | 1,000.0 | **0.500** (0.400–0.600 over 3 rounds) | "
            "workers 1.20, postgres 0.90 | postgres 0.80, pgbench 0.20 |") in text
    assert "| 2 × 4 | warm-up, not counted | 300 credits in 0.75 s | 400.0 | 1,200.0 | – |" in text
    assert "| 2 × 4 | 3 | 3,000 credits in 7.50 s | 400.0 | 1,000.0 | 0.400 | 5% / 5% |" in text
    assert "| 1 × 1 | 2 | 3,000 credits in 12.00 s | 250.0 | 500.0 | 0.500 |" in text
    assert "median of the rounds' ratios" in text


def test_where_the_time_goes_speaks_of_the_goals_configuration_and_the_spread():
    rows = [rounds_row(2, 4, [(900.0, 1500.0), (500.0, 1000.0), (400.0, 1000.0)]),
            rounds_row(1, 1, [(300.0, 600.0), (250.0, 500.0)])]

    lines = analysis.explain({"crediting": crediting(rows)})

    assert "With 8 worker threads" in lines[0]
    assert "ratio ran from 0.400 to 0.600 (median 0.500)" in lines[0]
    assert "per credit, the workers' side takes 2.1 × its CPU" in lines[0]


def test_a_report_made_before_the_rounds_still_renders():
    pgbench = pgbench_run(1744.6)
    del pgbench["cpu_ms_per_transaction"]
    old_row = {"processes": 2, "threads": 4, "concurrency": 8,
               "workers": workers_pass(807.3), "pgbench": pgbench, "ratio": 0.463}
    measurement = crediting([old_row])

    text = report.markdown(results(measurement), {})
    lines = analysis.explain({"crediting": measurement})

    assert "| 2 × 4 | 807.3 | 1,744.6 | **0.463** | workers 1.20, postgres 0.90 | waiting" in text
    assert "Every round" not in text
    assert "With 8 worker threads" in lines[0]
