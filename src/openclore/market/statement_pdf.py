"""A month's statement as a PDF (fpdf2), drawn from the statement the API answers
(:func:`openclore.market.statements.monthly_statement`): the CLI's ``statement --pdf`` and the
console's download both draw it here.

Amounts are printed as the exact decimal text the API sent, never through a float.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from fpdf import FPDF

# the PDF core fonts are Latin-1: anything else (a user's name, a reason) is shown as "?"
_LATIN1 = "latin-1"


def number_text(value: Decimal) -> str:
    """A Decimal as plain text (no exponent, no trailing zeros): ``0.0000042``."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _text(value: Any) -> str:
    if isinstance(value, Decimal):
        return number_text(value)
    return str(value).encode(_LATIN1, "replace").decode(_LATIN1)


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _table(pdf: FPDF, header: list[str], rows: list[list[str]], widths: list[float]) -> None:
    pdf.set_font("Helvetica", "B", 8)
    for name, w in zip(header, widths, strict=True):
        pdf.cell(w, 6, name, border="B")
    pdf.ln()
    pdf.set_font("Helvetica", "", 8)
    for row in rows:
        for i, (cell, w) in enumerate(zip(row, widths, strict=True)):
            text = _text(cell)
            while pdf.get_string_width(text) > w - 1 and len(text) > 4:
                text = text[:-4] + "..."
            pdf.cell(w, 5, text, align="R" if i and _numeric(cell) else "L")
        pdf.ln()
    pdf.ln(3)


def _numeric(cell: str) -> bool:
    return cell.lstrip("-").replace(".", "", 1).isdigit()


def render(statement: dict[str, Any], path: Path) -> None:
    """Write ``statement`` (the ``statement`` object of ``/v1/statement``) to ``path``."""
    path.write_bytes(render_bytes(statement))


def render_bytes(statement: dict[str, Any]) -> bytes:
    """``statement`` (the ``statement`` object of ``/v1/statement``) as a PDF document."""
    s = statement
    currency = s["currency"]
    pdf = FPDF(orientation="P", unit="mm", format="A4")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.set_title(f"Statement {s['month']} {currency}")
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 14)
    pdf.cell(0, 10, _text(f"Statement {s['month']} - {s['user']} - {currency}"))
    pdf.ln(10)
    pdf.set_font("Helvetica", "", 9)
    pdf.cell(0, 5, f"Period (UTC): {_when(s['from'])} to {_when(s['until'])}")
    pdf.ln(8)
    summary = [["Opening balance", _text(s["opening_balance"])]]
    summary += [[kind, _text(v)] for kind, v in s["totals"].items()]
    summary.append(["Closing balance", _text(s["closing_balance"])])
    _table(pdf, ["", currency], summary, [70, 50])
    if s["orders"]:
        pdf.set_font("Helvetica", "B", 10)
        pdf.cell(0, 6, "Orders")
        pdf.ln(7)
        kinds = sorted({k for o in s["orders"] for k in o if k not in ("order_id", "total")})
        rows = [
            [str(o["order_id"]), *(_text(o.get(k, "")) for k in kinds), _text(o["total"])]
            for o in s["orders"]
        ]
        width = 150 / (len(kinds) + 1)
        _table(pdf, ["order", *kinds, "total"], rows, [20] + [width] * (len(kinds) + 1))
    if s["entries"]:
        pdf.set_font("Helvetica", "B", 10)
        pdf.cell(0, 6, "Deposits, withdrawals, refunds and adjustments")
        pdf.ln(7)
        rows = [
            [
                _when(e["time"]),
                e["kind"],
                _text(e["amount"]),
                _text(e["balance"]),
                _text(e.get("memo") or ""),
                _text(e.get("by") or ""),
            ]
            for e in s["entries"]
        ]
        _table(
            pdf,
            ["time", "kind", "amount", "balance", "reason / memo", "by"],
            rows,
            [30, 24, 24, 24, 66, 22],
        )
    pdf.set_font("Helvetica", "I", 7)
    pdf.cell(0, 5, f"{s['entry_count']} ledger entries; opening + totals = closing.")
    return bytes(pdf.output())
