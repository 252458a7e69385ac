import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup(set_prefix=False)  # as django.core.wsgi.get_wsgi_application does

from core import heap  # noqa: E402 - after Django is set up
from core.wsgi import Handler  # noqa: E402

application = Handler()  # Django's handler, releasing each request's objects when done (core/wsgi.py)
heap.settle()
