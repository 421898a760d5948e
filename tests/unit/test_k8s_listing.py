"""A list response read item by item (agent.k8s.listing) gives exactly what json.loads
gives, for any list; malformed text raises ValueError."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.k8s.listing import scan_list

values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                   max_size=3), max_leaves=10)


@given(items=st.lists(st.dictionaries(st.text(max_size=5), values, max_size=4), max_size=5),
       meta=st.dictionaries(st.sampled_from(["resourceVersion", "continue"]), st.text(max_size=6)),
       items_first=st.booleans(), indent=st.sampled_from([None, 1]))
def test_items_and_metadata_equal_json_loads(items, meta, items_first, indent):
    body = {"items": items, "kind": "PodList", "metadata": meta} if items_first else \
        {"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": items}
    text = json.dumps(body, indent=indent)
    seen = []
    rest = scan_list(text, seen.append)
    assert seen == items
    assert rest == {k: v for k, v in body.items() if k != "items"}


@pytest.mark.parametrize("text", ['{"items": [{}', '{"items": [{}] "x": 1}', '[1]', '{"items": [1,]}', ''])
def test_malformed_lists_raise(text):
    with pytest.raises(ValueError):
        scan_list(text, lambda o: None)


def test_empty_object_and_items():
    assert scan_list("{}", lambda o: None) == {}
    assert scan_list('{"items": [], "metadata": {"resourceVersion": "5"}}', lambda o: None) == {
        "metadata": {"resourceVersion": "5"}}
