"""The `secateurs` entry point: workers/cli.py's commands (compress, schema, worker, ...) plus the service's.

    secateurs serve [--host H] [--port P] [--workers N]   API + N local worker processes (embedded default)
    secateurs keys create --tenant T [--name N] [--admin]  prints the new API key once (--admin: it may also read
                                                           /metrics, whose counts cover every tenant)
    secateurs keys revoke KEY_ID | keys list

Settings come from SECATEURS_* environment variables (docs/CONFIG.md); flags override host, port and workers.
Nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from workers import cli as engine_cli


def register(subparsers) -> None:
    """Add serve and keys to the `secateurs` parser."""
    p = subparsers.add_parser("serve", help="run the HTTP API and local workers (SQLite + local artifacts by default)")
    p.add_argument("--host", help="listen address (default: SECATEURS_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default: SECATEURS_PORT or 8000)")
    p.add_argument("--workers", type=int, help="local worker processes (default: SECATEURS_WORKER__CONCURRENCY or 2)")
    p.set_defaults(func=cmd_serve)

    keys = subparsers.add_parser("keys", help="manage API keys (hashed in the job store)")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    k = ksub.add_parser("create", help="create a key for a tenant and print it once")
    k.add_argument("--tenant", required=True)
    k.add_argument("--name", help="a label for the key")
    k.add_argument("--admin", action="store_true", help="an admin key: may also read /metrics (every tenant's counts)")
    k.set_defaults(func=cmd_keys_create)
    k = ksub.add_parser("revoke", help="revoke a key by its id (key_...)")
    k.add_argument("key_id")
    k.set_defaults(func=cmd_keys_revoke)
    k = ksub.add_parser("list", help="list keys (ids, tenants, state; never the keys)")
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=cmd_keys_list)


def build_parser() -> argparse.ArgumentParser:
    return engine_cli.build_parser(register)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def cmd_serve(args) -> int:
    import uvicorn

    from service.main import create_app
    from workers import redact

    settings = engine_cli.load_settings(host=args.host, port=args.port)
    redact.configure_logging(settings.log_level)
    if args.workers is not None and args.workers < 0:
        print("secateurs: error: --workers must be >= 0", file=sys.stderr)
        return 2
    app = create_app(settings, workers=args.workers)
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(), timeout_graceful_shutdown=30
    )
    return 0


def _store():
    from workers.store import open_store

    settings = engine_cli.load_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return open_store(settings.store_url)


def cmd_keys_create(args) -> int:
    from service.auth import create_key

    store = _store()
    try:
        record, plaintext = create_key(store, args.tenant, args.name, admin=args.admin)
    except ValueError as e:
        print(f"secateurs: error: {e}", file=sys.stderr)
        return 2
    admin = " (an admin key: it may read /metrics)" if record.admin else ""
    print(f"created {record.id} for tenant {record.tenant}{admin}; the key is shown only now:", file=sys.stderr)
    print(plaintext)
    return 0


def cmd_keys_revoke(args) -> int:
    store = _store()
    if not store.revoke_api_key(args.key_id):
        print(f"secateurs: error: no active key {args.key_id}", file=sys.stderr)
        return 2
    print(f"revoked {args.key_id}")
    return 0


def cmd_keys_list(args) -> int:
    keys = _store().list_api_keys()
    rows = [
        {
            "id": k.id,
            "tenant": k.tenant,
            "name": k.name,
            "created_at": k.created_at.isoformat(),
            "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
            "admin": k.admin,
        }
        for k in keys
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        state = f"revoked {r['revoked_at']}" if r["revoked_at"] else "active"
        print(f"{r['id']}  {r['tenant']:<20} {state:<40} {'admin ' if r['admin'] else ''}{r['name'] or ''}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
