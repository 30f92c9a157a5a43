"""The dashboard's value renderer never hands the page a string it cannot send."""

from hypothesis import given
from hypothesis import strategies as st

from neuron_tasks.dashboard.render import pretty


def test_a_lone_surrogate_is_shown_as_a_question_mark() -> None:
    text = pretty({"name": "\udc00ok"})
    assert "?ok" in text
    text.encode("utf-8")  # would raise UnicodeEncodeError if the surrogate reached the page


@given(st.recursive(st.text() | st.integers() | st.none(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                    max_leaves=20))
def test_any_decoded_payload_renders_as_utf8(value: object) -> None:
    pretty(value).encode("utf-8")
