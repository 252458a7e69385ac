from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "Platform core"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in

        from core.audit import audit_login

        user_logged_in.connect(audit_login, dispatch_uid="core.audit_login")
