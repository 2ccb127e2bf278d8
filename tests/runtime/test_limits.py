"""Unit tier: limits act on validated values (``runtime.limits``)."""

from __future__ import annotations

import pytest

from runtime.errors import ClientError
from runtime.limits import Limits, Work, check, check_text


@pytest.mark.parametrize("work,flag", [
    (Work(prompts=3), "--max_batch_size"),
    (Work(n=3), "--max_n"),
    (Work(max_tokens=101), "--max_tokens_limit"),
    (Work(stop_sequences=3), "--max_stop_sequences"),
])
def test_each_limit_names_its_flag(work: Work, flag: str) -> None:
    limits = Limits(max_batch_size=2, max_n=2, max_tokens=100, max_stop_sequences=2)
    with pytest.raises(ClientError, match=flag):
        check(limits, work)


def test_within_limits_and_unbounded() -> None:
    check(Limits(max_batch_size=2, max_n=2, max_tokens=100), Work(2, 2, 100, 1))
    check(Limits(max_batch_size=None, max_n=None, max_tokens=None, max_stop_sequences=None),
          Work(10_000, 10_000, 10**9, 10_000))


def test_token_cap_for_requests_without_max_tokens() -> None:
    assert Limits().token_cap() is None  # vLLM's default: up to the context
    assert Limits(max_tokens=800).token_cap() == 800
    assert Limits(max_tokens=800, default_max_tokens=5).token_cap() == 5


def test_engine_requests_count_n() -> None:
    assert Work(prompts=3, n=4).engine_requests == 12


def test_unpaired_surrogates_are_client_errors() -> None:
    with pytest.raises(ClientError, match="surrogate"):
        check_text({"messages": [{"content": "\ud800"}]})
    check_text({"messages": [{"content": "é ✓"}]})
