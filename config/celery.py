"""The Celery application; tasks are discovered in every installed app."""

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("compute_exchange")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.worker_ready.connect  # the solo and thread pools run tasks in this process
@signals.worker_process_init.connect  # the prefork pool's children
def _settle_heap(**_kwargs: object) -> None:
    from django.conf import settings

    from core import heap

    heap.settle()
    # Below the API's CPU priority: on busy cores requests go first and cycles take longer; no work is lost.
    niceness = int(settings.CX_WORKER_NICE)
    if niceness > os.getpriority(os.PRIO_PROCESS, 0):
        os.setpriority(os.PRIO_PROCESS, 0, niceness)  # this thread, which runs the tasks; threads it starts inherit it
