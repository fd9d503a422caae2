"""Smoke test of the benchmark harness: ``python -m bench --tiny --quick`` into a temporary folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_tiny_quick(tmp_path, embedded_dir):
    out = tmp_path / "results"
    docs = REPO / "docs"
    before = {p: p.stat().st_mtime_ns for p in docs.glob("bench.*")} if docs.is_dir() else {}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "bench", "--tiny", "--quick", "--out", str(out), "--no-docs"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    r = json.loads((out / "latest.json").read_text())
    assert (out / "bench.png").stat().st_size > 10_000
    assert (out / "bench.md").read_text().count("|") > 20
    for key in ("date", "machine", "config", "single", "concurrency", "backend", "targets"):
        assert key in r, key
    assert r["machine"]["cores"] >= 1 and r["machine"]["cpu"]

    for name in ("raw", "websocket", "http_sse"):
        s = r["single"][name]
        assert s["errors"] == 0, (name, s)
        assert s["tokens_per_s"] > 0 and s["tokens"] > 0, (name, s)
        assert 0 < s["ttft_ms"] < 10_000, (name, s)
        assert 0 < s["itl_p50_ms"] <= s["itl_p99_ms"], (name, s)
    assert r["single"]["http"]["e2e_tokens_per_s"] > 0 and r["single"]["http"]["errors"] == 0
    openai = r["single"]["openai_sse"]
    assert "skipped" in openai or (openai["errors"] == 0 and openai["tokens_per_s"] > 0)

    assert [lv["sessions"] for lv in r["concurrency"]] == [1, 4, 16, 64]
    for lv in r["concurrency"]:
        for side in ("websocket", "raw"):
            c = lv[side]
            assert c["errors"] == 0, (lv["sessions"], side, c["error_messages"])
            assert c["aggregate_tokens_per_s"] > 0
            assert c["tokens"] == lv["sessions"] * lv["tokens_per_session"], (lv["sessions"], side)

    backend = r["backend"]
    assert backend["cpu_s_per_1k_tokens"] > 0
    assert [i["sessions"] for i in backend["idle"]] == [0, 50, 100]
    assert all(i["errors"] == 0 and i["rss_mb"] > 0 for i in backend["idle"])
    assert backend["mb_per_idle_session"] is not None

    assert {t["target"] for t in r["targets"]} >= {"RSS per idle WebSocket session (MB)"}
    after = {p: p.stat().st_mtime_ns for p in docs.glob("bench.*")} if docs.is_dir() else {}
    assert after == before, "the smoke test must not write docs/"


def test_bench_batching_quick(tmp_path, tiny_model):
    """``python -m bench.batching`` on the tiny model: both server kinds, every level, no errors, the targets."""
    out = tmp_path / "results"
    readme_before = (REPO / "README.md").read_text()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "bench.batching", "--model", str(tiny_model), "--dtype", "float32",
                           "--sessions", "1,4", "--tokens", "6", "--out", str(out), "--no-docs"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads((out / "batching.json").read_text())
    assert (out / "batching.png").stat().st_size > 10_000
    assert set(r["kinds"]) == {"stock", "batched"}
    assert "--no_batching" in r["kinds"]["stock"]["flags"] and "--no_batching" not in r["kinds"]["batched"]["flags"]
    for kind in r["kinds"].values():
        assert [lv["sessions"] for lv in kind["levels"]] == [1, 4]
        for lv in kind["levels"]:
            assert lv["errors"] == 0, lv["error_messages"]
            assert lv["tokens"] == lv["sessions"] * 6
            assert lv["peak_rss_mb"]["server"] > 0 and lv["peak_rss_mb"]["backend"] > 0
    assert [x["batch"] for x in r["inprocess"]] == [1, 4] and all(x["ms_per_step"] > 0 for x in r["inprocess"])
    assert any("TTFT" in t["target"] for t in r["targets"])
    same = next(t for t in r["targets"] if "same greedy answers" in t["target"])  # float32: exact
    assert same["met"], (r["kinds"]["stock"]["answers"], r["kinds"]["batched"]["answers"])
    assert (REPO / "README.md").read_text() == readme_before, "the smoke test must not write the README"
