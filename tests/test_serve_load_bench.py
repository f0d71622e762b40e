"""benchmarks/serve_load.py's arithmetic (the load run itself needs a Ray cluster; the
service under load is tested in tests/test_serve_ray.py)."""
import numpy as np

from benchmarks import serve_load as S


def test_percentile_matches_numpy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 17):
        xs = list(rng.random(n))
        for q in (0.5, 0.95):
            assert np.isclose(S.percentile(xs, q), np.percentile(xs, 100 * q))


def test_table_reports_throughput_ratio():
    rows = [{"mode": m, "concurrency": c, "requests": 4, "throughput_rps": t, "p50_s": 1.0, "p95_s": 2.0,
             "max_s": 2.5, "generate_calls": 2.0, "requests_per_call": 2.0}
            for m, c, t in (("on", 4, 1.5), ("off", 4, 0.5))]
    meta = {"engines_name": "tiny", "steps": 2, "backend": "cpu", "ray_cpus": 2, "per_worker": 1, "max_batch": 8,
            "batch_wait_ms": 50.0, "concurrency": [4]}
    md = S.table(rows, meta)
    assert "| on | 4 | 4 | 1.500 |" in md and "C=4: 3.00×" in md
