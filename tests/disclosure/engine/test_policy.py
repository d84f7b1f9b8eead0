import hashlib

import pytest

from disclosure.engine.policy import DEFAULT_POLICY_PATH, PolicyError, load_policy, policy_from_bytes


def test_default_policy_hash_is_sha256_of_file_bytes():
    policy = load_policy()
    assert policy.sha256 == hashlib.sha256(DEFAULT_POLICY_PATH.read_bytes()).hexdigest()
    assert policy.get("frequency", "threshold") == 10
    assert policy.get("magnitude", "nk_k") == 0.9


def test_policy_zero_threshold_is_rejected():
    raw = DEFAULT_POLICY_PATH.read_bytes().replace(
        b"threshold = 10                 # minimum distinct",
        b"threshold = 0                 # minimum distinct",
    )
    with pytest.raises(PolicyError, match="threshold"):
        policy_from_bytes(raw)


def test_policy_without_version_is_rejected():
    with pytest.raises(PolicyError, match="version"):
        policy_from_bytes(b'name = "x"\n')


def test_policy_override_changes_hash_and_value(policy):
    stricter = policy.with_overrides({"frequency": {"threshold": 20}})
    assert stricter.get("frequency", "threshold") == 20
    assert stricter.sha256 != policy.sha256
    assert policy.get("frequency", "threshold") == 10
