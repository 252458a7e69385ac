"""Settlement statements for finance departments: a CSV to load into a
spreadsheet or accounting system, and a one- or two-page A4 PDF to file.

Both show the same figures as the API: amounts in CNY to the fen, times in
China Standard Time. The CSV starts with a block of ``field,value`` rows (the
statement, period, organisation, status and totals), then a blank row, then
one row per lease. The PDF lists at most :data:`PDF_LINES` leases (the
largest first) and sums the rest in one row, so it stays short enough to
file; the CSV always lists every line."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from pathlib import Path
from xml.sax.saxutils import escape

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Sum
from django.utils import timezone
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfbase.ttfonts import TTFError, TTFont
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from billing import settlement
from billing.domain.pricing import CST
from billing.models import SettlementStatement, StatementLine, StatementRole

PDF_LINES = 25
PDF_HISTORY = 12
LINE_COLUMNS = ("lease_id", "pool_identifier", "job_id", "samples", "ncu_hours", "gross", "commission", "net")
CJK_FONT = "STSong-Light"  # one of the PDF standard Asian fonts: readers supply the glyphs, nothing is embedded
# TrueType fonts with Chinese glyphs that are embedded (subset) when present, so
# the statement shows the same names in every viewer. CX_PDF_CJK_FONT names one.
SYSTEM_CJK_FONTS = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
)


def platform_name() -> str:
    return getattr(settings, "CX_PLATFORM_NAME", "Compute Exchange")


def _cst(moment: datetime | None) -> str:
    return moment.astimezone(CST).strftime("%Y-%m-%d %H:%M") if moment else ""


def period_label(statement: SettlementStatement) -> str:
    return f"{_cst(statement.period.start)} – {_cst(statement.period.end)} CST"


# --- CSV -------------------------------------------------------------------------------------------------------------


def _cell(text: object) -> str:
    """Text for a spreadsheet cell: a leading =, +, - or @ would make a
    spreadsheet evaluate a name as a formula, so such text is quoted."""
    value = str(text)
    return f"'{value}" if value[:1] in {"=", "+", "-", "@", "\t", "\r"} else value


def summary_rows(statement: SettlementStatement) -> list[tuple[str, object]]:
    organisation = statement.organisation
    return [
        ("statement", settlement.statement_number(statement)),
        ("statement_id", statement.pk),
        ("platform", platform_name()),
        ("period_start_cst", _cst(statement.period.start)),
        ("period_end_cst", _cst(statement.period.end)),
        ("organisation", _cell(organisation.name)),
        ("credit_code", organisation.credit_code),
        ("role", statement.role),
        ("status", statement.status),
        ("currency", "CNY"),
        ("samples", statement.samples),
        ("gross", statement.gross),
        ("commission", statement.commission),
        ("net", statement.net),
        ("voucher_funded", statement.voucher_funded),
        ("adjustments", statement.adjustments),
        ("disputed_amount", statement.disputed_amount),
        ("payable", statement.payable),
    ]


def statement_csv(statement: SettlementStatement) -> str:
    """The statement as CSV text: the summary block, a blank row, the lines."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerows(summary_rows(statement))
    writer.writerow([])
    writer.writerow(LINE_COLUMNS)
    for line in settlement.statement_lines(statement).iterator(chunk_size=2000):
        writer.writerow(
            [
                line.lease_id,
                _cell(line.lease.pool.identifier),
                line.lease.job_id,
                line.samples,
                line.ncu_hours,
                line.gross,
                line.commission,
                line.net,
            ]
        )
    return out.getvalue()


# --- PDF -------------------------------------------------------------------------------------------------------------

_registered: dict[str, str] = {}  # font file ("" for the standard font) -> registered name


def cjk_font() -> str:
    """The registered font for text the Latin fonts lack: the TrueType font of
    ``CX_PDF_CJK_FONT``, else the first of ``SYSTEM_CJK_FONTS`` on this machine
    (both embedded), else the standard STSong-Light (not embedded). A configured
    font that cannot be read is a configuration error, not a silent fallback."""
    configured = getattr(settings, "CX_PDF_CJK_FONT", "")
    path = configured or next((p for p in SYSTEM_CJK_FONTS if Path(p).is_file()), "")
    if path not in _registered:
        if not path:
            pdfmetrics.registerFont(UnicodeCIDFont(CJK_FONT))
            _registered[path] = CJK_FONT
        else:
            name = f"CX-CJK-{len(_registered)}"
            try:
                pdfmetrics.registerFont(TTFont(name, path, subfontIndex=0))
            except (OSError, TTFError) as error:
                raise ImproperlyConfigured(f"CX_PDF_CJK_FONT: cannot use {path}: {error}") from error
            _registered[path] = name
    return _registered[path]


BODY = ParagraphStyle("body", fontName="Helvetica", fontSize=8.5, leading=11)
SMALL = ParagraphStyle("small", parent=BODY, fontSize=7.5, leading=9.5, textColor=colors.HexColor("#444444"))
TITLE = ParagraphStyle("title", parent=BODY, fontName="Helvetica-Bold", fontSize=15, leading=19)
HEADING = ParagraphStyle("heading", parent=BODY, fontName="Helvetica-Bold", fontSize=10, leading=13, spaceBefore=8)


def _p(text: object, style: ParagraphStyle = BODY) -> Paragraph:
    """A paragraph of plain text; text the Latin fonts lack (Chinese names) is set
    in the Chinese font (:func:`cjk_font`), which also has Latin letters."""
    value = str(text)
    try:
        value.encode("cp1252")  # what the standard Latin fonts can set
    except UnicodeEncodeError:
        style = ParagraphStyle(f"{style.name}-cjk", parent=style, fontName=cjk_font())
    return Paragraph(escape(value), style)


def _grid(
    rows: list[list[object]], widths: list[float], *, header: bool = True, numeric: tuple[int, int] | None = None
) -> Table:
    """A table; the columns ``numeric`` (first, last) are right-aligned."""
    table = Table(rows, colWidths=widths, repeatRows=1 if header else 0, hAlign="LEFT")
    style = [
        ("FONT", (0, 0), (-1, -1), "Helvetica", 8),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.HexColor("#BBBBBB")),
        ("TOPPADDING", (0, 0), (-1, -1), 2),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
    ]
    if numeric is not None:
        style.append(("ALIGN", (numeric[0], 0), (numeric[1], -1), "RIGHT"))
    if header:
        style += [
            ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 8),
            ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#EEEEEE")),
        ]
    table.setStyle(TableStyle(style))
    return table


def _lines_table(statement: SettlementStatement, width: float) -> Table:
    lines = StatementLine.objects.filter(statement=statement)
    shown = list(lines.select_related("lease__pool").order_by("-gross", "lease_id")[:PDF_LINES])
    rows: list[list[object]] = [
        ["Lease", "Pool identifier", "Job", "Samples", "NCU-hours", "Gross", "Commission", "Net"]
    ]
    rows += [
        [
            line.lease_id,
            line.lease.pool.identifier,
            line.lease.job_id,
            line.samples,
            line.ncu_hours,
            line.gross,
            line.commission,
            line.net,
        ]
        for line in shown
    ]
    rest = lines.exclude(pk__in=[line.pk for line in shown])
    others = rest.aggregate(
        n=Sum("samples"), ncu=Sum("ncu_hours"), gross=Sum("gross"), commission=Sum("commission"), net=Sum("net")
    )
    count = rest.count()
    if count:
        rows.append(
            [
                f"{count} more leases, listed in the CSV export",
                "",
                "",
                others["n"],
                others["ncu"],
                others["gross"],
                others["commission"],
                others["net"],
            ]
        )
    rows.append(["Total", "", "", statement.samples, "", statement.gross, statement.commission, statement.net])
    fractions = (0.08, 0.27, 0.07, 0.09, 0.13, 0.13, 0.12, 0.11)
    table = _grid(rows, [width * f for f in fractions], numeric=(3, 7))
    extra = [("FONT", (0, -1), (-1, -1), "Helvetica-Bold", 8)]
    if count:
        extra.append(("SPAN", (0, -2), (2, -2)))
    table.setStyle(TableStyle(extra))
    return table


def _history_rows(statement: SettlementStatement) -> list[list[object]]:
    rows: list[list[object]] = [["When (CST)", "Who", "What", "Amount", "Reason"]]
    for entry in settlement.statement_history(statement).order_by("id")[:PDF_HISTORY]:
        what = entry.action.removeprefix("statement.").replace("_", " ")
        if entry.from_state and entry.to_state and entry.from_state != entry.to_state:
            what = f"{what} ({entry.from_state} -> {entry.to_state})"
        rows.append(
            [
                _cst(entry.at),
                _p(entry.actor_label, SMALL),
                _p(what, SMALL),
                entry.data.get("amount", ""),
                _p(entry.reason, SMALL),
            ]
        )
    return rows


def statement_pdf(statement: SettlementStatement) -> bytes:
    """The statement as an A4 PDF: platform, statement number, period in CST,
    the parties, the lines, the totals, the status and its approval and payout
    record. Page streams are left uncompressed (the document is small), so the
    statement number can be found in the bytes."""
    number = settlement.statement_number(statement)
    organisation = statement.organisation
    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=18 * mm,
        rightMargin=18 * mm,
        topMargin=16 * mm,
        bottomMargin=16 * mm,
        title=f"Settlement statement {number}",
        author=platform_name(),
        subject=f"{statement.get_role_display()} statement, {period_label(statement)}",
        pageCompression=0,
    )
    width = doc.width
    is_provider = statement.role == StatementRole.PROVIDER
    payout = settlement.statement_payout(statement)
    story: list = [
        _p(f"{platform_name()} · Settlement statement", SMALL),
        _p(number, TITLE),
        _p(
            f"{statement.get_role_display()} statement · period {period_label(statement)} · "
            f"status: {statement.get_status_display()}",
        ),
        Spacer(1, 4 * mm),
    ]
    payee = "Payee (provider)" if is_provider else "Buyer"
    parties = [
        ["Issued by", _p(platform_name()), "Statement no.", number],
        [payee, _p(organisation.name), "Credit code", organisation.credit_code],
        ["Identifier", organisation.identifier or "", "Statement id", statement.pk],
    ]
    story.append(_grid(parties, [width * f for f in (0.16, 0.42, 0.16, 0.26)], header=False))
    story += [_p("Lines (one per lease)", HEADING), _lines_table(statement, width)]
    totals: list[list[object]] = [
        ["Gross usage charged", statement.gross],
        ["Platform commission", statement.commission],
        ["Net (provider share)", statement.net],
        ["Funded by compute vouchers", statement.voucher_funded],
    ]
    if is_provider:
        totals += [
            ["Adjustments", statement.adjustments],
            ["Held back under dispute", statement.disputed_amount],
            ["Payable", statement.payable],
        ]
    story += [
        _p("Totals (CNY)", HEADING),
        _grid(totals, [width * 0.4, width * 0.2], header=False, numeric=(1, 1)),
        _p("Review and payout record", HEADING),
        _grid(_history_rows(statement), [width * f for f in (0.17, 0.14, 0.27, 0.12, 0.30)], numeric=(3, 3)),
    ]
    story.append(Spacer(1, 2 * mm))
    if payout is not None:
        story.append(
            _p(f"Paid out {payout.amount} CNY on {_cst(payout.at)} CST (ledger transaction {payout.key}).", BODY)
        )
    elif is_provider:
        story.append(_p("Not paid out yet." if statement.status != "paid" else "Paid: nothing was payable.", BODY))
    story += [
        Spacer(1, 4 * mm),
        _p(
            f"Amounts in CNY, rounded to the fen. Generated {_cst(timezone.now())} CST by {platform_name()}. "
            "The CSV export of this statement lists every line.",
            SMALL,
        ),
    ]
    doc.build(story)
    return buffer.getvalue()


def export_filename(statement: SettlementStatement, extension: str) -> str:
    return f"{settlement.statement_number(statement)}.{extension}"
