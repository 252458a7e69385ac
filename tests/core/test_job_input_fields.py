"""Fields built once per class validate exactly as DRF's per-instance deep
copies do: the same values, the same errors, request after request."""

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.api.views import JobInput


class DeepJobInput(JobInput):
    """JobInput with DRF's own per-instance deep copies of its fields."""

    def get_fields(self):
        return copy.deepcopy(self._declared_fields)


FIELDS = list(JobInput._declared_fields)
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(["cuda", "cann", "cpu", "x86_64", "GZ", "NX", "beijing", "cheapest", "fp16"]),
    st.just("2026-12-01T08:00:00Z"),
    st.lists(st.sampled_from(["GZ", "JJJ", "nvidia-a10-24gb", "python", 7, None]), max_size=4),
    st.decimals(allow_nan=False, allow_infinity=False, places=3, min_value=-1000, max_value=10**6).map(str),
)
base = {"name": "job", "software_stack": "cuda", "accelerators_per_node": 1, "duration_seconds": 3600}


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), values, max_size=8), st.booleans())
def test_shallow_copies_validate_as_deep_copies(changes, from_base):
    data = {**base, **changes} if from_base else changes
    lean, deep = JobInput(data=data), DeepJobInput(data=data)
    assert lean.is_valid() == deep.is_valid()
    assert lean.errors == deep.errors
    if deep.is_valid():
        assert lean.validated_data == deep.validated_data


def test_a_field_of_one_request_keeps_nothing_for_the_next():
    bad = JobInput(data={**base, "allowed_hubs": ["nowhere"], "nodes": 0})
    assert not bad.is_valid()
    assert set(bad.errors) == {"allowed_hubs", "nodes"}
    good = JobInput(data={**base, "allowed_hubs": ["GZ"]})
    assert good.is_valid(), good.errors
    assert good.validated_data["allowed_hubs"] == ["GZ"]
    assert good.fields["nodes"].parent == good and bad.fields["nodes"].parent == bad
