"""Notices to the caller's organisation."""

from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import query_filters
from core.models import Notice
from core.permissions import IsMember


class NoticeOutput(serializers.ModelSerializer):
    class Meta:
        model = Notice
        fields = ("id", "kind", "title", "message", "subject_type", "subject_id", "created_at", "read_at")


class NoticeListView(APIView):
    """Your organisation's notices, newest first (``?unread=1`` for unread only)."""

    permission_classes = [IsMember]

    class Filters(serializers.Serializer):
        unread = serializers.BooleanField(required=False, allow_null=True, default=None, help_text="Unread only")

    @extend_schema(parameters=[Filters], responses=NoticeOutput(many=True))
    def get(self, request: Request) -> Response:
        notices = Notice.objects.filter(organisation_id=request.user.organisation_id)
        if query_filters(request, self.Filters).get("unread"):
            notices = notices.filter(read_at__isnull=True)
        return Response(NoticeOutput(notices[:200], many=True).data)


class NoticeReadView(APIView):
    """Mark one of your organisation's notices read."""

    permission_classes = [IsMember]

    @extend_schema(request=None, responses=NoticeOutput)
    def post(self, request: Request, pk: int) -> Response:
        notice = get_object_or_404(Notice, pk=pk, organisation_id=request.user.organisation_id)
        if notice.read_at is None:
            Notice.objects.filter(pk=notice.pk).update(read_at=timezone.now())
            notice.refresh_from_db()
        return Response(NoticeOutput(notice).data)
