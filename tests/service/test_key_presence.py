"""The no-key fast path: without any API key, requests skip the per-request key query; once a key exists
(created in another process), it is enforced within the cache's ttl."""

from __future__ import annotations

import time

from service.auth import KeyPresence
from workers.store import open_store


def test_no_key_is_cached_for_the_ttl_and_a_new_key_is_seen_after_it(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'jobs.db'}")
    other = open_store(f"sqlite:///{tmp_path / 'jobs.db'}")  # `secateurs keys create` in another process
    try:
        presence = KeyPresence(store, ttl=0.3)
        assert presence.known_absent() is False  # never checked yet
        assert presence.refresh() is False
        assert presence.known_absent() is True
        other.create_api_key("key_1", "acme", "h" * 64, "ci")
        assert presence.known_absent() is True  # within the ttl: the cached answer
        time.sleep(0.35)
        assert presence.known_absent() is False
        assert presence.refresh() is True
        other.revoke_api_key("key_1")  # a revoked key still counts: the answer stays final
        assert presence.known_absent() is False and presence.refresh() is True
    finally:
        store.close()
        other.close()
