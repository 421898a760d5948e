"""Path normalization as Istio's default (BASE), table and properties."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.rbac.pathnorm import BadTarget, Target, normalize_target, remove_dot_segments


@pytest.mark.parametrize("target, path, query, authority", [
    ("/public/../admin", "/admin", "", None),
    ("/%61dmin", "/admin", "", None),
    ("/%2e%2e/admin", "/admin", "", None),
    ("/a/%2E/b", "/a/b", "", None),
    ("\\admin", "/admin", "", None),
    ("/a\\..\\b", "/b", "", None),
    ("http://host/admin", "/admin", "", "host"),
    ("HTTP://host:81", "/", "", "host:81"),
    ("http://h?x=1", "/", "?x=1", "h"),
    ("/a//b", "/a//b", "", None),  # BASE: no merging
    ("/a%2fb%5Cc", "/a%2Fb%5Cc", "", None),  # BASE: %2F and %5C stay encoded
    ("/%7e%5F%2D%30", "/~_-0", "", None),
    ("/caf%c3%a9", "/caf%C3%A9", "", None),
    ("/a/b/../../../c", "/c", "", None),
    ("/a/.", "/a/", "", None),
    ("/a/..", "/", "", None),
    ("/x?a=/../admin", "/x", "?a=/../admin", None),
])
def test_normalized(target, path, query, authority):
    t = normalize_target("GET", target)
    assert isinstance(t, Target) and (t.path, t.query, t.authority) == (path, query, authority)


@pytest.mark.parametrize("method, target", [
    ("GET", "/%00"), ("GET", "/a%zz"), ("GET", "/a%4"), ("GET", "/a#frag"), ("GET", "*"),
    ("GET", "admin"), ("GET", "ftp://h/a"), ("GET", "http://u@h/a"), ("GET", "http:///admin"),
])
def test_refused(method, target):
    assert isinstance(normalize_target(method, target), BadTarget)


def test_asterisk_and_connect_forms():
    assert normalize_target("OPTIONS", "*").path == "*"
    assert normalize_target("CONNECT", "h:443").path == "h:443"


PATH_CHARS = st.sampled_from(list("ab/.\\%2eEfF5c7~-_?") + ["%2e", "%2E", "%61", "%2f", "%5c", "..", "./"])


@given(st.lists(PATH_CHARS, max_size=30).map(lambda xs: "/" + "".join(xs)))
def test_normalization_is_idempotent_and_leaves_no_dot_segment(target):
    t = normalize_target("GET", target)
    if isinstance(t, BadTarget):
        return
    again = normalize_target("GET", t.forward)
    assert isinstance(again, Target) and again.path == t.path
    segs = t.path.split("/")
    assert "." not in segs and ".." not in segs and "\\" not in t.path and t.path.startswith("/")


@given(st.lists(st.sampled_from(["a", ".", "..", ""]), max_size=12).map(lambda xs: "/" + "/".join(xs)))
def test_remove_dot_segments_matches_rfc3986_reference(path):
    assert remove_dot_segments(path) == _rfc3986(path)


def _rfc3986(inp: str) -> str:
    """RFC 3986 5.2.4, literally (the reference the segment version must agree with)."""
    out = ""
    while inp:
        if inp.startswith("../"):
            inp = inp[3:]
        elif inp.startswith("./"):
            inp = inp[2:]
        elif inp.startswith("/./"):
            inp = inp[2:]
        elif inp == "/.":
            inp = "/"
        elif inp.startswith("/../"):
            inp = inp[3:]
            out = out[:out.rfind("/")] if "/" in out else ""
        elif inp == "/..":
            inp = "/"
            out = out[:out.rfind("/")] if "/" in out else ""
        elif inp in (".", ".."):
            inp = ""
        else:
            start = 1 if inp.startswith("/") else 0
            i = inp.find("/", start)
            seg, inp = (inp, "") if i < 0 else (inp[:i], inp[i:])
            out += seg
    return out
