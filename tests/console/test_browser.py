"""End to end in Debian's Chromium (headless), against the live server with
the demo market: the operator's dashboard draws its charts and follows the
market without a reload; the operator approves a voucher application and a
settlement statement in the console, each with a reason; a buyer sees why a
job waits. Screenshots go to test-artefacts/."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.models import SettlementStatement
from core.models import AuditEntry
from marketplace.domain.geography import HUBS
from marketplace.management.commands.load_demo_market import DEMO_PASSWORD
from marketplace.models import User
from scheduler import services as scheduler_services
from scheduler.models import Job
from vouchers.models import VoucherApplication

pytestmark = [pytest.mark.django_db(transaction=True)]
WAIT_MS = 10_000


def sign_in(browser, live_server, username: str):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(f"{live_server.url}/dashboard/")
    assert "/accounts/login/" in page.url, "anonymous visitors are sent to sign in"
    page.fill("#id_username", username)
    page.fill("#id_password", DEMO_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/dashboard/")
    return context, page


def count(page, selector: str) -> int:
    return page.locator(selector).count()


def test_operator_watches_the_market_and_approves_an_application_and_a_statement(
    browser, live_server, demo_market, settings, artefacts
):
    settings.CX_DASHBOARD_POLL_SECONDS = 1
    context, page = sign_in(browser, live_server, "operator")

    # The charts are drawn from the demo market.
    page.wait_for_selector('[data-chart="capacity"] svg')
    hub_labels = page.locator('[data-chart="capacity"] text.label').all_text_contents()
    assert hub_labels == list(HUBS), "one bar per hub, all eight labelled"
    assert count(page, '[data-chart="capacity"] rect.bar') >= len(HUBS)
    assert count(page, '[data-chart="utilisation"] rect.bar') >= 2, "some hubs are in use"
    assert count(page, '[data-chart="prices"] circle.point') >= 1
    assert count(page, '[data-chart="jobs"] rect.bar') >= 3, "queued, scheduled, running, succeeded…"
    assert count(page, '[data-chart="green"] rect.bar') == len(HUBS)
    assert count(page, '[data-chart="carbon"] rect.bar') == len(HUBS)
    assert count(page, '[data-chart="vouchers"] rect.bar') >= 1
    queued = Job.objects.filter(status="queued").count()
    assert page.text_content('.tile [data-figure="queue_length"]') == str(queued)
    page.screenshot(path=str(artefacts / "dashboard.png"), full_page=True)

    # A buyer submits a job that must wait: the queue figure follows without a reload.
    buyer = User.objects.get(username="buyer-university")
    scheduler_services.job_submit(
        user=buyer,
        values={
            "name": "one more pretraining run",
            "software_stack": "cuda",
            "device_models": ["nvidia-h800-sxm5-80gb"],
            "accelerators_per_node": 8,
            "nodes": 64,
            "duration_seconds": 3600,
        },
    )
    page.wait_for_function(
        "n => document.querySelector('.tile [data-figure=\"queue_length\"]').textContent === String(n)",
        arg=queued + 1,
        timeout=WAIT_MS,
    )

    # The voucher application awaiting review is approved from its queue, with a reason.
    application = VoucherApplication.objects.get(status="pending_review")
    page.goto(f"{live_server.url}/review/voucher_applications/")
    page.check(f'input[name="_selected_action"][value="{application.pk}"]')
    page.select_option('select[name="action"]', "approve_selected")
    page.click('button[name="index"]')
    page.fill("#id_reason", "documents checked: hospital registration and project plan")
    page.click('input[name="apply"]')
    page.wait_for_selector(".messagelist .success")
    application.refresh_from_db()
    assert application.status == "approved"
    assert AuditEntry.objects.filter(
        entity_id=str(application.pk), to_state="approved", reason__contains="documents checked", actor_label="operator"
    ).exists()

    # A provider statement awaiting approval: its page shows lines, usage and history; approved with a reason.
    page.goto(f"{live_server.url}/review/provider_statements/")
    page.locator("#result_list tbody tr th a").first.click()
    page.wait_for_selector("#statement")
    statement = SettlementStatement.objects.get(pk=int(page.get_attribute("#statement", "data-statement")))
    assert statement.status == "pending_review"
    assert count(page, "#lines tbody tr") == statement.lines.count()
    assert count(page, "#samples tbody tr") == min(statement.samples, 300)
    assert page.get_attribute("#export-csv", "href").endswith(f"/{statement.pk}/export.csv")
    page.screenshot(path=str(artefacts / "statement.png"), full_page=True)
    page.select_option("#id_decision", "approve")
    page.fill("#id_reason", "usage matches the agent logs")
    page.click("#record-decision")
    page.wait_for_selector(".messagelist .success")
    assert page.text_content("#statement-status") == "Paid out"
    statement.refresh_from_db()
    assert statement.status == "paid"
    assert statement.payable > Decimal(0)
    assert AuditEntry.objects.filter(
        entity_id=str(statement.pk), action="statement.approved", reason="usage matches the agent logs"
    ).exists()
    context.close()

    # A buyer sees why its job waits.
    context, page = sign_in(browser, live_server, "buyer-sme")
    page.click("text=My jobs")
    waiting = page.locator("tr.state-queued .pending-reason").first
    assert "pools fit" in waiting.text_content()
    assert "no free capacity" in waiting.text_content()
    page.screenshot(path=str(artefacts / "buyer-jobs.png"), full_page=True)
    context.close()
