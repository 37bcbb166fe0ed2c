"""The graph store contract (tests/graph_contract.py) against every registered back end."""

from graph_contract import (
    backend,
    make_persistent,
    make_store,
    persistent_backend,
    test_contract_any_batching_and_order_same_hash,
    test_contract_apply_twice_changes_nothing,
    test_contract_empty_store,
    test_contract_persists_across_reopen,
    test_contract_positions_never_go_back,
    test_contract_positions_only_delta,
    test_contract_priority_rule_follows_config,
    test_contract_queries_equal_reference,
    test_contract_query_answers,
    test_contract_refuses_other_rules,
    test_contract_reset_forgets_everything,
    test_contract_state_equals_reference,
)

__all__ = [
    "backend",
    "make_persistent",
    "make_store",
    "persistent_backend",
    "test_contract_any_batching_and_order_same_hash",
    "test_contract_apply_twice_changes_nothing",
    "test_contract_empty_store",
    "test_contract_persists_across_reopen",
    "test_contract_positions_never_go_back",
    "test_contract_positions_only_delta",
    "test_contract_priority_rule_follows_config",
    "test_contract_queries_equal_reference",
    "test_contract_query_answers",
    "test_contract_refuses_other_rules",
    "test_contract_reset_forgets_everything",
    "test_contract_state_equals_reference",
]
