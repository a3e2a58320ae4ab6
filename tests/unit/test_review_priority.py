"""The "review next" order: unsure, disputed and drifted images first, classes taken in turn."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from vectorai.review.priority import Candidate, priority_key, review_order

candidates = st.lists(st.builds(Candidate, margin=st.floats(0, 1), predicted_class=st.integers(0, 4),
                                shadow_disagrees=st.booleans(), drifted=st.booleans()), max_size=40)


@settings(max_examples=300, deadline=None)
@given(candidates)
def test_every_candidate_comes_once(items: list[Candidate]) -> None:
    assert sorted(review_order(items)) == list(range(len(items)))


@settings(max_examples=300, deadline=None)
@given(candidates)
def test_within_a_class_the_most_urgent_come_first(items: list[Candidate]) -> None:
    order = review_order(items)
    for label in {item.predicted_class for item in items}:
        keys = [priority_key(items[i]) for i in order if items[i].predicted_class == label]
        assert keys == sorted(keys)


@settings(max_examples=300, deadline=None)
@given(candidates)
def test_no_class_gets_ahead_of_another_by_more_than_one(items: list[Candidate]) -> None:
    """Every prefix (every page) holds each class that still has images left about equally."""
    order = review_order(items)
    total = Counter(item.predicted_class for item in items)
    shown: Counter[int] = Counter()
    for index in order:
        shown[items[index].predicted_class] += 1
        left = [label for label in total if shown[label] < total[label]]
        assert all(shown[label] <= shown[other] + 1 for label in total for other in left)


@settings(max_examples=300, deadline=None)
@given(candidates)
def test_the_first_is_the_most_urgent_of_all(items: list[Candidate]) -> None:
    if items:
        assert priority_key(items[review_order(items)[0]]) == min(map(priority_key, items))


def test_a_page_mixes_classes_and_puts_flags_and_small_margins_first() -> None:
    items = ([Candidate(margin=0.01 * i, predicted_class=3) for i in range(10)]
             + [Candidate(margin=0.9, predicted_class=5), Candidate(margin=0.95, predicted_class=7, drifted=True),
                Candidate(margin=0.99, predicted_class=3, shadow_disagrees=True)])
    order = review_order(items)
    assert order[:3] == [11, 12, 10]  # drifted, then disputed, then class 5's unsure one
    assert order[3:5] == [0, 1]  # then class 3's by margin, the other classes having run out
