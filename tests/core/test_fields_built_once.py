"""Serializers whose fields are built once per class behave as DRF's own:
each instance has its own fields, bound to it, reading its own context."""

from __future__ import annotations

import gc
import weakref

from rest_framework import serializers

from core.api import FieldsBuiltOnce


class ContextEcho(serializers.CharField):
    """A field that says which request it serves (through its root serializer's context)."""

    def to_internal_value(self, data: str) -> str:
        return f"{data}@{self.context['who']}"


class Sample(FieldsBuiltOnce, serializers.Serializer):
    name = serializers.CharField(max_length=5)
    tags = serializers.ListField(child=ContextEcho(), default=list)
    extra = serializers.DictField(child=serializers.IntegerField(min_value=0), required=False)
    notes = serializers.ListField(child=serializers.CharField(), required=False, default=[])
    method = serializers.SerializerMethodField()

    def get_method(self, obj: dict) -> str:
        return f"{obj['name']} for {self.context['who']}"


def test_each_instance_has_its_own_fields_bound_to_it():
    first, second = Sample(context={"who": "a"}), Sample(context={"who": "b"})
    for name in ("name", "tags", "extra", "notes", "method"):
        assert first.fields[name] is not second.fields[name]
        assert first.fields[name].parent == first and second.fields[name].parent == second
        assert first.fields[name].parent != second
    assert first.fields["tags"].child is not second.fields["tags"].child
    assert first.fields["tags"].child.parent == first.fields["tags"]
    assert first.fields["tags"].child.root == first and second.fields["extra"].child.root == second


def test_a_serializer_and_its_fields_are_freed_without_the_garbage_collector():
    """Bound weakly: no reference cycle between a serializer and its fields, nor a list field and its child."""
    gc.collect()
    gc.disable()
    try:
        data = Sample(data={"name": "x", "tags": ["t"], "extra": {"k": 1}}, context={"who": "a"})
        assert data.is_valid(), data.errors
        tags, serializer = weakref.ref(data.fields["tags"]), weakref.ref(data)
        child = weakref.ref(data.fields["tags"].child)
        del data
        assert serializer() is None and tags() is None and child() is None
    finally:
        gc.enable()


def test_fields_read_the_context_of_their_own_instance():
    first = Sample(data={"name": "x", "tags": ["t"]}, context={"who": "a"})
    second = Sample(data={"name": "y", "tags": ["u", "v"]}, context={"who": "b"})
    assert second.is_valid() and first.is_valid()
    assert first.validated_data["tags"] == ["t@a"]
    assert second.validated_data["tags"] == ["u@b", "v@b"]
    assert Sample({"name": "z"}, context={"who": "c"}).data["method"] == "z for c"


def test_errors_name_their_field_as_drf_does():
    data = Sample(data={"name": "toolong", "tags": "x", "extra": {"k": -1}}, context={"who": "a"})
    assert not data.is_valid()
    assert set(data.errors) == {"name", "tags", "extra"}
    again = Sample(data={"name": "ok", "extra": {"k": "nan"}}, context={"who": "a"})
    assert not again.is_valid() and set(again.errors) == {"extra"}


def test_a_mutable_default_is_not_shared_between_instances():
    first = Sample(data={"name": "x"}, context={"who": "a"})
    assert first.is_valid()
    first.validated_data["notes"].append("changed by the first request")
    second = Sample(data={"name": "y"}, context={"who": "b"})
    assert second.is_valid()
    assert second.validated_data["notes"] == []


def test_a_subclass_builds_its_own_fields():
    class Wider(Sample):
        more = serializers.IntegerField()

    assert "more" in Wider().fields and "more" not in Sample().fields
    assert "more" in Wider().fields
