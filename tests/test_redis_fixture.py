"""The Redis fixture gives a working server on both backends, Lua included."""

import redis

INCR_WITH_TTL = """
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {value, redis.call('PTTL', KEYS[1])}
"""


def test_lua_script_runs_atomically_on_both_backends(redis_client: redis.Redis) -> None:
    script = redis_client.register_script(INCR_WITH_TTL)
    assert script(keys=["counter"], args=[5, 10_000])[0] == 5
    value, ttl = script(keys=["counter"], args=[7, 10_000])
    assert value == 12
    assert 0 < ttl <= 10_000


def test_each_test_starts_with_an_empty_database(redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0
    redis_client.set("leftover", 1)
