"""Results: targets, the terminal table, ``latest.json``, the PNG chart and the markdown table."""

from __future__ import annotations

import json
from pathlib import Path

from .readme_section import replace_section


def targets(r: dict) -> list[dict]:
    single = r["single"]
    raw, ws = single["raw"], single["websocket"]
    levels = {lv["sessions"]: lv for lv in r["concurrency"]}
    out = []

    def add(name: str, value, goal: str, met: bool | None) -> None:
        out.append({"target": name, "value": value, "goal": goal, "met": met})

    ratio = ws["tokens_per_s"] / raw["tokens_per_s"] if raw["tokens_per_s"] else None
    add("single-stream WebSocket tokens/s vs raw", _r(ratio, 3), ">= 0.95", ratio is not None and ratio >= 0.95)
    gap = (ws["ttft_ms"] - raw["ttft_ms"]) if ws["ttft_ms"] is not None and raw["ttft_ms"] is not None else None
    add("WebSocket TTFT minus raw TTFT (ms)", _r(gap, 1), "<= 20", gap is not None and gap <= 20)
    if 16 in levels:
        lv = levels[16]
        add("16 sessions: aggregate tokens/s vs raw (16 threads)", _r(lv["ratio"], 3), ">= 0.9",
            lv["ratio"] is not None and lv["ratio"] >= 0.9)
    if 64 in levels:
        w = levels[64]["websocket"]
        add("64 sessions: errors", w["errors"], "0", w["errors"] == 0)
        add("64 sessions: starved sessions (outside 2x of median)", w["starved"], "0", w["starved"] == 0)
    mb = r["backend"]["mb_per_idle_session"]
    add("RSS per idle WebSocket session (MB)", _r(mb, 3), "< 1", mb is not None and mb < 1)
    if "answer_check" in r:
        add("greedy answer names Paris", r["answer_check"]["answer"], "contains Paris", r["answer_check"]["ok"])
    return out


def _r(x, nd):
    return None if x is None else round(x, nd)


def _f(x, nd=1) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def header(r: dict) -> str:
    m, c = r["machine"], r["config"]
    return (f"{r['date']} | {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM | {c['model']} | "
            f"swarm {c['swarm_dtype']}, client {c['client_dtype']}, threads server {c['server_threads']} / "
            f"client {c['client_threads']} | {c['tokens']} tokens per single stream, {c['concurrent_tokens']} per "
            f"concurrent session | {c.get('duration_s', '?')} s")


def rows(r: dict) -> dict[str, list[list[str]]]:
    names = {"raw": "raw Petals client (limit)", "websocket": "WebSocket /api/v2/generate",
             "http": "HTTP /api/v1/generate", "http_sse": "HTTP /api/v1/generate SSE",
             "openai_sse": "OpenAI /v1/completions SSE"}
    single = []
    raw_tps = r["single"]["raw"]["tokens_per_s"]
    for key, name in names.items():
        s = r["single"][key]
        if "skipped" in s:
            single.append([name, "skipped", "", "", "", "", s["skipped"]])
            continue
        tps = s["tokens_per_s"] if key != "http" else s["e2e_tokens_per_s"]
        single.append([name, _f(tps), _f(tps / raw_tps, 2) if raw_tps else "-", _f(s["ttft_ms"]),
                       _f(s["itl_p50_ms"]), _f(s["itl_p99_ms"]), str(s["errors"])])
    conc = []
    for lv in r["concurrency"]:
        w, rw = lv["websocket"], lv["raw"]
        conc.append([str(lv["sessions"]), str(lv["tokens_per_session"]), _f(w["aggregate_tokens_per_s"]),
                     _f(rw["aggregate_tokens_per_s"]), _f(lv["ratio"], 2), _f(w["itl_p50_ms"]), _f(w["itl_p99_ms"]),
                     _f(rw["itl_p99_ms"]), str(w["errors"]),
                     f"{_f(w['session_tps_min'], 2)}/{_f(w['session_tps_median'], 2)}/{_f(w['session_tps_max'], 2)}",
                     str(w["starved"]), _f((w["cpu_s_per_1k_tokens"] or {}).get("backend"), 2)])
    b = r["backend"]
    cost = [["backend CPU s per 1,000 tokens (WebSocket, all runs)", _f(b["cpu_s_per_1k_tokens"], 2)]]
    raw_cpu = r["single"]["raw"].get("cpu_s_per_1k_tokens") or {}
    ws_cpu = r["single"]["websocket"].get("cpu_s_per_1k_tokens") or {}
    cost += [["single stream, CPU s per 1,000 tokens: raw client in-process (with its p2pd)",
              _f(raw_cpu.get("bench"), 2)],
             ["single stream, CPU s per 1,000 tokens: backend process (with its p2pd)", _f(ws_cpu.get("backend"), 2)],
             ["single stream, CPU s per 1,000 tokens: swarm server (raw / WebSocket)",
              f"{_f(raw_cpu.get('server'), 2)} / {_f(ws_cpu.get('server'), 2)}"]]
    for i in b["idle"]:
        cost.append([f"backend RSS with {i['sessions']} idle sessions (MB)", _f(i["rss_mb"])])
    cost.append(["RSS per idle session (MB)", _f(b["mb_per_idle_session"], 3)])
    tg = [[t["target"], str(t["value"]), t["goal"], "met" if t["met"] else "MISSED"] for t in r["targets"]]
    return {"single": single, "concurrency": conc, "cost": cost, "targets": tg}


HEADS = {
    "single": ["single stream", "tok/s", "vs raw", "TTFT ms", "ITL p50 ms", "ITL p99 ms", "errors"],
    "concurrency": ["sessions", "tok/session", "WS agg tok/s", "raw agg tok/s", "WS/raw", "WS ITL p50",
                    "WS ITL p99", "raw ITL p99", "errors", "session tok/s min/med/max", "starved",
                    "backend CPU s/1k tok"],
    "cost": ["backend cost", "value"],
    "targets": ["target", "value", "goal", "status"],
}


def _line(cells: list, widths: list[int]) -> str:
    return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()


def _line(cells: list, widths: list[int]) -> str:
    return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()


def table(r: dict) -> str:
    out = [header(r)]
    for key, body in rows(r).items():
        head = HEADS[key]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=False)]
        out += ["", _line(head, widths), _line(["-" * w for w in widths], widths)]
        out += [_line(b, widths) for b in body]
    return "\n".join(out)


def markdown(r: dict) -> str:
    out = ["<!-- generated by `make bench` (python -m bench); do not edit -->", "", f"_{header(r)}_"]
    for key, body in rows(r).items():
        head = HEADS[key]
        out += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(c.replace("|", "/") for c in b) + " |" for b in body]
    if "answer_check" in r:
        out += ["", f"Greedy answer to \"{r['answer_check']['question']}\": \"{r['answer_check']['answer']}\""]
    return "\n".join(out) + "\n"


def chart(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4.2))
    names = [("raw", "raw"), ("websocket", "WS"), ("http_sse", "HTTP SSE"), ("openai_sse", "OpenAI SSE")]
    shown = [(label, r["single"][k]) for k, label in names if "skipped" not in r["single"][k]]
    a1.bar([n for n, _ in shown], [s["tokens_per_s"] for _, s in shown], color="#4c72b0")
    a1.set_title("single stream: tokens/s")
    a1b = a1.twinx()
    a1b.plot([n for n, _ in shown], [s["ttft_ms"] or 0 for _, s in shown], "o-", color="#dd8452")
    a1b.set_ylabel("TTFT ms", color="#dd8452")
    a1b.set_ylim(bottom=0)
    lv = r["concurrency"]
    xs = [str(x["sessions"]) for x in lv]
    a2.plot(xs, [x["raw"]["aggregate_tokens_per_s"] for x in lv], "o-", label="raw client (threads)")
    a2.plot(xs, [x["websocket"]["aggregate_tokens_per_s"] for x in lv], "s-", label="WebSocket sessions")
    a2.set_title("aggregate tokens/s by concurrent sessions")
    a2.set_xlabel("sessions")
    a2.set_ylim(bottom=0)
    a2.legend()
    a3.plot(xs, [x["websocket"]["itl_p50_ms"] or 0 for x in lv], "s-", label="WS p50")
    a3.plot(xs, [x["websocket"]["itl_p99_ms"] or 0 for x in lv], "s--", label="WS p99")
    a3.plot(xs, [x["raw"]["itl_p99_ms"] or 0 for x in lv], "o--", label="raw p99")
    a3.set_title("inter-token latency (ms)")
    a3.set_xlabel("sessions")
    a3.set_yscale("log")
    a3.legend()
    m, c = r["machine"], r["config"]
    fig.suptitle(f"Petals Chat benchmark: {c['model']}, swarm {c['swarm_dtype']} | {m['cpu']}, {m['cores']} cores | "
                 f"{r['date'][:10]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_all(r: dict, out: Path, docs: Path | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(r, indent=2) + "\n")
    chart(r, out / "bench.png")
    (out / "bench.md").write_text(markdown(r))
    if docs is not None:
        docs.mkdir(parents=True, exist_ok=True)
        chart(r, docs / "bench.png")
        (docs / "bench.md").write_text(markdown(r))
        update_readme(docs.parent / "README.md", markdown(r))


README_START = "<!-- bench:start (written by make bench) -->"
README_END = "<!-- bench:end -->"


def update_readme(readme: Path, table: str) -> None:
    """Replace the README's Performance table (between the bench markers) with this run's."""
    replace_section(readme, README_START, README_END, table)
