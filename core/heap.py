"""The heap of a long-running process (an API or scheduling worker), settled after start-up.

Python's cyclic garbage collector walks every container object it tracks on a
full collection, and every young object on each young collection. Measured in
an API worker serving 50 quotes a second, the defaults cost 15–18% of its CPU:

- once Django, DRF and the project's modules are loaded, well over a hundred
  thousand objects live as long as the process, and a full collection walking
  them took 75–115 ms, a pause every few seconds for whichever requests were
  being served. Moving them to the permanent generation (:func:`gc.freeze`)
  leaves collections only the objects made since;
- objects in reference cycles are freed only by the collector. With the
  default 700 allocations between young collections, the objects of the
  requests still in flight are found alive again and again and moved on to
  the older generations, which walk them once more. A young collection every
  20,000 allocations lets most of them become garbage first.

With both the collector took about 5% of the worker's CPU. Requests no longer
leave reference cycles (:mod:`core.wsgi`): a young collection found about
20,000 objects of cyclic garbage and took 15–125 ms of wall time at 200
requests a second before that, and such collections went from about 80 to 4
per process in a minute of that load after it. In a 30-second run at that
rate, before, 700 gave a median quote ten times longer than 3,000 or 20,000,
which gave about the same latencies."""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000  # allocations between young collections (Python's default: 700)
MIDDLE_THRESHOLD = 20  # young collections per middle one (default 10)
OLD_THRESHOLD = 10  # middle collections per full one, as by default


def settle() -> None:
    """Load what requests will use, freeze the heap as it stands, and space the collections out."""
    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018 - imports every view, serializer and the services behind them
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
