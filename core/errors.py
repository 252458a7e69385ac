"""One hierarchy of application errors: a machine code, a human sentence and
(where one input is to blame) the field. The API turns them into
``{"code", "detail", "field"}`` with the error's HTTP status."""

from typing import Any


class ApplicationError(Exception):
    code = "error"
    status = 400

    def __init__(self, detail: str, *, field: str | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.extra = extra or {}


class InvalidInput(ApplicationError):
    code = "invalid"


class NotFound(ApplicationError):
    code = "not_found"
    status = 404


class Forbidden(ApplicationError):
    code = "forbidden"
    status = 403


class Conflict(ApplicationError):
    code = "conflict"
    status = 409


class AppendOnly(Conflict):
    """An attempt to change or delete a row of an append-only table (the audit trail)."""

    code = "append_only"


class IllegalTransition(Conflict):
    code = "illegal_transition"

    def __init__(self, *, entity: str, current: str, target: str) -> None:
        super().__init__(
            f"{entity} is {current}; it cannot become {target}.",
            field="status",
            extra={"current": current, "target": target},
        )
