from kairos.schemas.keys import RedisKeys


def test_golden_key_bytes():
    """Key names are a storage format: changing one orphans every stored value, so they are pinned here."""
    keys = RedisKeys("kairos", "kairos-worker")
    assert keys.user_state(0) == "kairos:state:{kairos:kairos-worker:p0}:users"
    assert keys.offsets(7) == "kairos:state:{kairos:kairos-worker:p7}:offsets"
    assert keys.user_activity(2) == "kairos:state:{kairos:kairos-worker:p2}:activity"
    assert keys.global_checkpoint(1) == "kairos:state:{kairos:kairos-worker:p1}:global"
    assert keys.global_offsets(1) == "kairos:state:{kairos:kairos-worker:p1}:global-offsets"
    assert keys.serving("12345") == "kairos:rec:12345"
    assert keys.trending() == "kairos:trending"


def test_partition_keys_share_a_cluster_hash_tag():
    keys = RedisKeys("k", "g")
    tags = {key[key.index("{") : key.index("}") + 1] for key in (keys.user_state(3), keys.offsets(3), keys.global_checkpoint(3), keys.user_activity(3))}
    assert tags == {"{k:g:p3}"}
