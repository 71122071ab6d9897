"""Print the latest results in bench/results/*.json as the Markdown tables of docs/benchmarks.md.

.venv/bin/python bench/report.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _machine(r: dict[str, Any]) -> str:
    m = r["machine"]
    load = m.get("loadavg_at_start", ["?"])[0], m.get("loadavg_at_end", ["?"])[0]
    return (
        f"Command: `.venv/bin/python {r['command']}` — {m['date']}, {m['cores']} cores "
        f"({m['cpu_model']}), Python {m['python']}, "
        f"load average {load[0]} at start, {load[1]} at the end"
        + ("" if r.get("ok") else f" — **FAILED: {r.get('error')}**")
    )


def marketplace(r: dict[str, Any]) -> list[str]:
    labels = {
        "bare": "bare ASGI app (ceiling)",
        "anon": "openclore, anonymous",
        "auth": "openclore, with a token",
        "limits": "openclore, default rate limits (token per request)",
    }
    out = [
        _machine(r),
        "",
        f"Body {r['body_bytes'] / 1e6:.2f} MB.",
        "",
        "| target | round | req/s | p50 ms | p99 ms | ratio to ceiling | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in r.get("median_run", {}).items():
        out.append(
            f"| {labels[name]} | {row['round']} | {row['rps']:.1f} | {row['p50_ms']:.1f} | "
            f"{row['p99_ms']:.1f} | {row.get('ratio_to_bare', 1.0):.2f} | {row['errors']} |"
        )
    return out


def endpoints(r: dict[str, Any]) -> list[str]:
    labels = {
        "bare": 'raw ASGI app answering {"code":0} (ceiling)',
        "wallets": "openclore wallets",
        "my_orders": f"openclore my_orders ({r.get('orders', '?')} orders)",
    }
    out = [
        _machine(r),
        "",
        f"Database: {r.get('database', '?')}.",
        "",
        "| target | round | req/s | p50 ms | p99 ms | ratio to ceiling | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in r.get("median_run", {}).items():
        out.append(
            f"| {labels[name]} | {row['round']} | {row['rps']:.1f} | {row['p50_ms']:.1f} | "
            f"{row['p99_ms']:.1f} | {row.get('ratio_to_bare', 1.0):.2f} | {row['errors']} |"
        )
    return out


def settlement(r: dict[str, Any]) -> list[str]:
    out = [
        _machine(r),
        "",
        "| case | database | orders | tick s | orders/s | exact-path servers "
        "| ended (balance / mrl) "
        "| bare UPDATE s | ratio to ceiling |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r.get("median_run", []):
        out.append(
            f"| {row['case']} | {row['backend']} | {row['orders']:,} | {row['tick_s']:.3f} | "
            f"{row['orders_per_s']:,.0f} | {row['exact_path_servers']:,} | "
            f"{row['ended_balance']:,} / {row['ended_mrl']:,} | {row['bare_update_s']:.3f} | "
            f"{row['ratio_to_ceiling']:.2f} |"
        )
    return out


def agent_start(r: dict[str, Any]) -> list[str]:
    out = [_machine(r), ""]
    med = r.get("median_run")
    if med is None:
        return out
    push = "not recorded" if med["push_s"] is None else f"{med['push_s']:.3f}"
    out += [
        "| run (median of "
        f"{len(r['runs'])}) | create_order → running s | order reached the agent s "
        "| bare create + start s | ratio to ceiling | extra s |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {med['run']} | {med['agent_s']:.3f} | {push} | {med['bare_s']:.3f} | "
        f"{med['ratio_to_ceiling']:.2f} | {med['extra_s']:+.3f} |",
    ]
    if r.get("push_missing"):
        out.append(f"\nPush time not recorded in {r['push_missing']} runs.")
    return out


def console(r: dict[str, Any]) -> list[str]:
    out = [_machine(r), ""]
    out += [
        "| page | console p50 ms | p95 ms | API, same query, p50 ms | ratio | p50 < 50 ms |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, shape in r.get("shapes", {}).items():
        c, a = shape["console"], shape["api_same_query"]
        out.append(
            f"| {name} | {c['p50_ms']:.1f} | {c['p95_ms']:.1f} | {a['p50_ms']:.1f} | "
            f"{shape['ratio_p50']:.2f} | {'yes' if shape['pass'] else 'NO'} |"
        )
    out.append(f"\nCold first render: {r.get('cold_first_render_ms')} ms.")
    return out


def main() -> int:
    for name, render in (
        ("marketplace", marketplace),
        ("endpoints", endpoints),
        ("endpoints-postgresql", endpoints),
        ("settlement", settlement),
        ("agent_start", agent_start),
        ("console", console),
    ):
        result = _load(name)
        print(f"### {name}\n")
        print("\n".join(render(result)) if result else "(no result yet)")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
