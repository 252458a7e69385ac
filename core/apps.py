from typing import Any

from django.apps import AppConfig


def _text_only(to_internal_value: Any) -> Any:
    def strict(self: Any, data: Any) -> Any:
        if not isinstance(data, str):
            self.fail("invalid")
        return to_internal_value(self, data)

    return strict


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "Platform core"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in

        from core.audit import audit_login

        user_logged_in.connect(audit_login, dispatch_uid="core.audit_login")

        from rest_framework import serializers

        # A text field takes text, as the schema says (``type: string``): DRF would also take
        # the JSON number 0 and store "0". Query strings and form fields are text already.
        serializers.CharField.to_internal_value = _text_only(serializers.CharField.to_internal_value)
