"""Dramatiq's RedisBroker on the local Redis (venv: .bench-venvs/dramatiq-redis)."""

from __future__ import annotations

import dramatiq
import harness
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq_common import DramatiqSystem, dramatiq_worker_main
from harness import dist_version

NAMESPACE = "dramatiq"


def build_broker(db_url: str, redis_url: str) -> dramatiq.Broker:
    return RedisBroker(url=redis_url, namespace=NAMESPACE)


class RedisSystem(DramatiqSystem):
    name = "redis"

    build_broker = staticmethod(build_broker)

    def __init__(self, opts: harness.Options) -> None:
        super().__init__(opts)
        self.client = redis.Redis.from_url(opts.redis_url)

    def reset_storage(self) -> None:
        self.client.flushdb()

    def pending(self) -> bool:
        # Every enqueued, not yet acked message has a field in this hash; ack
        # deletes it (HLEN is O(1)).
        return int(self.client.hlen(f"{NAMESPACE}:{harness.QUEUE}.msgs")) > 0

    def problems(self) -> str | None:
        dead = int(self.client.hlen(f"{NAMESPACE}:{harness.QUEUE}.XQ.msgs"))
        return f"{dead} dead-lettered" if dead else None

    def close(self) -> None:
        super().close()
        self.client.close()

    def versions(self) -> dict[str, str]:
        info = self.client.info("server")
        return {
            "dramatiq": dist_version("dramatiq"),
            "redis-py": dist_version("redis"),
            "redis-server": str(info.get("redis_version")),
        }

    def settings(self) -> dict[str, str]:
        cfg = self.client.config_get("appendonly") | self.client.config_get("save")
        return self.dramatiq_settings() | {
            "broker": f"RedisBroker(url={self.opts.redis_url}) defaults",
            "bulk": "n/a (Dramatiq has no bulk enqueue; group() sends one by one)",
            "redis persistence": f"appendonly={cfg.get('appendonly')}, save={cfg.get('save')!r}",
            "side channel": "HLEN dramatiq:bench.msgs == 0",
        }


if __name__ == "__main__":
    harness.main(RedisSystem, dramatiq_worker_main(build_broker))
