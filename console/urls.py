"""The server-rendered pages: sign-in, the market dashboard and the buyers' and providers' own pages."""

from django.urls import path

urlpatterns: list = []
