"""Merge rules: commutative, associative, idempotent; configuration validated."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heimdall_core.errors import ConfigError
from heimdall_core.graph.rules import (
    ORDER_BYTES,
    Rule,
    RuleSet,
    lift,
    merge,
    order_key,
    visible,
)

scalars = st.one_of(st.integers(-(2**40), 2**40), st.text(max_size=6), st.binary(max_size=4),
                    st.booleans())
values = st.one_of(scalars, st.lists(st.text(max_size=4), max_size=3),
                   st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2))
feeds = st.sampled_from([b"\x01" * 32, b"\x02" * 32])
# Few distinct times and sequences so ties in the HLC happen often.
orders = st.builds(order_key, st.integers(0, 3), st.integers(0, 1), feeds, st.integers(0, 3))


@st.composite
def cells(draw: Any, rule: Rule) -> Any:
    value = draw(values)
    if rule is Rule.SEALS:
        value = [[draw(st.binary(min_size=16, max_size=16)), draw(st.binary(min_size=1, max_size=4))]]
    return lift(rule, value, draw(orders), draw(st.integers(0, 3)))


RULES = [Rule.LWW, Rule.MIN, Rule.MAX, Rule.UNION, Rule.COUNT, Rule.PRIORITY, Rule.SEALS]


@pytest.mark.parametrize("rule", RULES)
@settings(deadline=None, max_examples=150)
@given(data=st.data())
def test_merge_is_a_join(rule: Rule, data: st.DataObject) -> None:
    a, b, c = (data.draw(cells(rule)) for _ in range(3))
    assert merge(rule, a, b) == merge(rule, b, a), "commutative"
    assert merge(rule, merge(rule, a, b), c) == merge(rule, a, merge(rule, b, c)), "associative"
    assert merge(rule, a, a) == a, "idempotent"
    assert merge(rule, merge(rule, a, b), b) == merge(rule, a, b), "absorbs what it holds"


def test_lww_takes_the_latest_in_the_total_order() -> None:
    feed_a, feed_b = b"\x01" * 32, b"\x02" * 32
    early = lift(Rule.LWW, "old", order_key(10, 0, feed_b, 99), 0)
    late = lift(Rule.LWW, "new", order_key(10, 1, feed_a, 0), 0)
    tie_broken_by_feed = lift(Rule.LWW, "feed b", order_key(10, 1, feed_b, 0), 0)
    assert visible(Rule.LWW, merge(Rule.LWW, early, late)) == "new"
    assert visible(Rule.LWW, merge(Rule.LWW, late, tie_broken_by_feed)) == "feed b"
    assert len(order_key(1, 2, feed_a, 3)) == ORDER_BYTES


def test_priority_prefers_listed_provider_then_latest() -> None:
    rules = RuleSet.from_config({}, ("maxmind", "rdap"))
    feed = b"\x01" * 32
    rdap_late = lift(Rule.PRIORITY, 2, order_key(50, 0, feed, 1), rules.rank("rdap"))
    maxmind_early = lift(Rule.PRIORITY, 1, order_key(10, 0, feed, 0), rules.rank("maxmind"))
    unknown = lift(Rule.PRIORITY, 3, order_key(99, 0, feed, 2), rules.rank("someone"))
    assert visible(Rule.PRIORITY, merge(Rule.PRIORITY, rdap_late, maxmind_early)) == 1
    assert visible(Rule.PRIORITY, merge(Rule.PRIORITY, unknown, rdap_late)) == 2
    assert rules.rank("someone") == rules.rank(None) == 2


def test_min_max_union_count_read_as_expected() -> None:
    feed = b"\x01" * 32
    o1, o2 = order_key(1, 0, feed, 0), order_key(2, 0, feed, 1)
    assert merge(Rule.MIN, 5, 3) == 3 and merge(Rule.MAX, 5, 3) == 5
    assert merge(Rule.MIN, "b", "a") == "a"
    assert visible(Rule.UNION, merge(Rule.UNION, lift(Rule.UNION, ["x", "y"], o1, 0),
                                     lift(Rule.UNION, "y", o2, 0))) == ["x", "y"]
    counted = merge(Rule.COUNT, lift(Rule.COUNT, "v", o1, 0), lift(Rule.COUNT, "w", o2, 0))
    assert visible(Rule.COUNT, counted) == 2
    assert visible(Rule.COUNT, merge(Rule.COUNT, counted, lift(Rule.COUNT, "again", o1, 0))) == 2


def test_rules_from_config_override_defaults() -> None:
    rules = RuleSet.from_config({"dump": {"source": "union"}, "fact": {"asn": "lww", "*": "union"}},
                                ("a", "b"))
    assert rules.rule("dump", "source") is Rule.UNION
    assert rules.rule("dump", "name") is Rule.LWW
    assert rules.rule("value", "fact.asn") is Rule.LWW
    assert rules.rule("value", "fact.country") is Rule.UNION
    assert rules.rule("value", "seals") is Rule.SEALS
    assert rules.fingerprint() != RuleSet.default().fingerprint()
    assert RuleSet.default().fingerprint() == RuleSet.from_config({}, ()).fingerprint()


@pytest.mark.parametrize(("config", "message"), [
    ({"vertex": {"x": "lww"}}, "graph.rules.vertex: unknown vertex type; configurable: dump, fact, value"),
    ({"dump": {"colour": "lww"}}, "graph.rules.dump.colour: unknown property; configurable for dump:"),
    ({"value": {"first_seen_ms": "newest"}},
     "graph.rules.value.first_seen_ms: 'newest' is not a merge rule; allowed: lww, min, max, union, "
     "count, priority"),
    ({"value": {"first_seen_ms": "seals"}}, "is not a merge rule"),
    ({"fact": {"Bad Name": "lww"}}, "graph.rules.fact.Bad Name: a fact name"),
])
def test_bad_rules_config_names_key_and_allowed(config: dict[str, dict[str, str]], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        RuleSet.from_config(config, ())
    assert message in str(info.value)


def test_provider_listed_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="provider_priority"):
        RuleSet.from_config({}, ("a", "a"))
