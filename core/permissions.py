"""Who may call what. Every view names one of these (or AllowAny) explicitly."""

from rest_framework.permissions import BasePermission
from rest_framework.request import Request


def role_of(user: object) -> str:
    return getattr(user, "role", "") or ""


class _RolePermission(BasePermission):
    roles: frozenset[str] = frozenset()
    message = "This endpoint is not open to your role."

    def has_permission(self, request: Request, view: object) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and role_of(user) in self.roles)


class IsOperator(_RolePermission):
    roles = frozenset({"operator"})
    message = "Only platform operators may do this."


class IsProvider(_RolePermission):
    roles = frozenset({"provider"})
    message = "Only provider organisations may do this."


class IsBuyer(_RolePermission):
    roles = frozenset({"buyer"})
    message = "Only buyer organisations may do this."


class IsProviderOrOperator(_RolePermission):
    roles = frozenset({"provider", "operator"})
    message = "Only providers and operators may do this."


class IsMember(_RolePermission):
    roles = frozenset({"buyer", "provider", "operator"})
    message = "Sign in as a member of an organisation."
