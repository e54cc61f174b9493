"""The API keys' table of the SQL store (`SqlJobStore` inherits it): keys are stored by hash, revoked by time."""

from __future__ import annotations

from sqlalchemy import insert, select, update

from workers.jobs import ApiKeyRecord, utcnow
from workers.store.schema import api_keys


def _key(row) -> ApiKeyRecord:
    m = row._mapping
    return ApiKeyRecord(
        id=m["id"],
        tenant=m["tenant"],
        name=m["name"],
        created_at=m["created_at"],
        revoked_at=m["revoked_at"],
        admin=bool(m["admin"]),
    )


class ApiKeys:
    """The API-key half of `SqlJobStore`; uses its `engine`."""

    def create_api_key(
        self, key_id: str, tenant: str, key_hash: str, name: str | None = None, *, admin: bool = False
    ) -> ApiKeyRecord:
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(
                insert(api_keys).values(
                    id=key_id, tenant=tenant, name=name, key_hash=key_hash, created_at=now, admin=admin
                )
            )
        return ApiKeyRecord(id=key_id, tenant=tenant, name=name, created_at=now, admin=admin)

    def find_api_key(self, key_hash: str) -> tuple[ApiKeyRecord, str] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.key_hash == key_hash)).first()
        return None if row is None else (_key(row), row.key_hash)

    def revoke_api_key(self, key_id: str) -> bool:
        with self.engine.begin() as conn:
            return (
                conn.execute(
                    update(api_keys)
                    .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                    .values(revoked_at=utcnow())
                ).rowcount
                == 1
            )

    def list_api_keys(self) -> list[ApiKeyRecord]:
        with self.engine.connect() as conn:
            return [_key(r) for r in conn.execute(select(api_keys).order_by(api_keys.c.created_at)).all()]

    def any_api_key(self) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(api_keys.c.id).limit(1)).first() is not None
