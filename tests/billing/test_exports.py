"""Statement exports a finance department can load (CSV) and file (PDF)."""

import csv
import io
import re
from decimal import Decimal
from pathlib import Path

import pytest
import reportlab
from django.core.exceptions import ImproperlyConfigured

from billing import exports, settlement
from billing.domain.pricing import CST
from billing.models import SettlementStatement
from marketplace.models import Organisation
from tests.billing.test_settlement import charged_leases, close_until_now

pytestmark = pytest.mark.django_db


def provider_statement(provider) -> SettlementStatement:
    return SettlementStatement.objects.select_related("period", "organisation").get(
        organisation=provider.organisation, role="provider"
    )


def parse_csv(text: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    rows = list(csv.reader(io.StringIO(text)))
    blank = rows.index([])
    header = dict(rows[:blank])
    lines = [dict(zip(rows[blank + 1], row, strict=True)) for row in rows[blank + 2 :]]
    return header, lines


def pages(pdf: bytes) -> int:
    return len(re.findall(rb"/Type /Page\b(?!s)", pdf))


def test_the_csv_header_and_lines_add_up_to_the_statement():
    provider, _buyer, leases = charged_leases(3)
    close_until_now()
    statement = provider_statement(provider)

    header, lines = parse_csv(exports.statement_csv(statement))

    assert header["statement"] == settlement.statement_number(statement)
    assert header["statement_id"] == str(statement.pk)
    assert header["period_start_cst"] == statement.period.start.astimezone(CST).strftime("%Y-%m-%d %H:%M")
    assert header["organisation"] == provider.organisation.name
    assert header["credit_code"] == provider.organisation.credit_code
    assert (header["role"], header["status"]) == ("provider", "pending_review")
    assert Decimal(header["gross"]) == statement.gross
    assert Decimal(header["payable"]) == statement.payable
    assert [int(line["lease_id"]) for line in lines] == [lease.pk for lease in leases]
    assert [line["pool_identifier"] for line in lines] == [lease.pool.identifier for lease in leases]
    assert [int(line["job_id"]) for line in lines] == [lease.job_id for lease in leases]
    for column in ("gross", "commission", "net"):
        assert sum(Decimal(line[column]) for line in lines) == getattr(statement, column) == Decimal(header[column])
    assert sum(int(line["samples"]) for line in lines) == statement.samples


def test_a_name_that_looks_like_a_formula_is_not_run_by_a_spreadsheet():
    provider, _buyer, _ = charged_leases(1)
    Organisation.objects.filter(pk=provider.organisation.pk).update(name='=HYPERLINK("http://x.example")')
    close_until_now()
    header, _ = parse_csv(exports.statement_csv(provider_statement(provider)))
    assert header["organisation"] == '\'=HYPERLINK("http://x.example")'


def test_the_pdf_is_an_a4_document_with_the_statement_number_and_payout(operator):
    provider, _buyer, _ = charged_leases(2)
    close_until_now()
    statement = settlement.statement_approve(statement=provider_statement(provider), actor=operator, reason="ok")
    pdf = exports.statement_pdf(statement)
    assert pdf.startswith(b"%PDF")
    assert settlement.statement_number(statement).encode() in pdf
    assert b"/MediaBox [ 0 0 595.2756 841.8898 ]" in pdf  # A4
    assert pages(pdf) == 1
    assert f"payout:statement:{statement.pk}".encode() in pdf
    assert b"Paid out" in pdf


def test_a_pdf_of_many_leases_stays_short_and_sets_chinese_names_in_a_chinese_font():
    provider, _buyer, _ = charged_leases(exports.PDF_LINES + 5, samples=1)
    Organisation.objects.filter(pk=provider.organisation.pk).update(name="贵州算力科技有限公司")
    close_until_now()
    pdf = exports.statement_pdf(provider_statement(provider))
    assert pages(pdf) <= 2
    assert b"5 more leases, listed in the CSV export" in pdf
    assert b"/FontFile" in pdf or exports.CJK_FONT.encode() in pdf  # embedded, or the standard Chinese font


def test_without_a_chinese_truetype_font_the_standard_chinese_font_is_named(monkeypatch, settings):
    settings.CX_PDF_CJK_FONT = ""
    monkeypatch.setattr(exports, "SYSTEM_CJK_FONTS", ())
    provider, _buyer, _ = charged_leases(1)
    Organisation.objects.filter(pk=provider.organisation.pk).update(name="贵州算力科技有限公司")
    close_until_now()
    pdf = exports.statement_pdf(provider_statement(provider))
    assert exports.CJK_FONT.encode() in pdf
    assert b"/FontFile2" not in pdf


def test_a_configured_truetype_font_is_embedded_in_the_statement(settings):
    settings.CX_PDF_CJK_FONT = str(Path(reportlab.__file__).parent / "fonts" / "Vera.ttf")
    provider, _buyer, _ = charged_leases(1)
    Organisation.objects.filter(pk=provider.organisation.pk).update(name="Ünïcode 算力")
    close_until_now()
    pdf = exports.statement_pdf(provider_statement(provider))
    assert b"/FontFile2" in pdf  # the font program travels with the document
    assert exports.CJK_FONT.encode() not in pdf


def test_a_configured_font_that_cannot_be_read_is_a_configuration_error(settings, tmp_path):
    settings.CX_PDF_CJK_FONT = str(tmp_path / "missing.ttf")
    provider, _buyer, _ = charged_leases(1)
    Organisation.objects.filter(pk=provider.organisation.pk).update(name="贵州算力")
    close_until_now()
    with pytest.raises(ImproperlyConfigured, match="CX_PDF_CJK_FONT"):
        exports.statement_pdf(provider_statement(provider))
