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


def test_a_cache_of_zero_seconds_enforces_a_key_created_elsewhere_on_the_next_request(tmp_path):
    """SECATEURS_AUTH_CACHE_SECONDS=0: every request without a key asks the store, so the first key created by
    another process is required at once."""
    from fastapi.testclient import TestClient

    from service.main import create_app
    from workers.settings import Settings

    settings = Settings(data_dir=tmp_path / "data", auth_cache_seconds=0)
    app = create_app(settings, workers=0)
    with TestClient(app) as c:
        assert app.state.key_presence.ttl == 0
        assert c.get("/v1/jobs").status_code == 200
        other = open_store(settings.store_url)  # `secateurs keys create` in another process
        try:
            other.create_api_key("key_1", "acme", "h" * 64, "ci")
        finally:
            other.close()
        assert c.get("/v1/jobs").status_code == 401
