"""webhooks: config section validation; every error names the setting, never the secret."""

from __future__ import annotations

from typing import Any

import pytest

from proof_messenger.relay.config import ConfigError
from proof_messenger.webhooks.config import parse_webhook_settings

GOOD = {"url": "https://ledger.example/hook", "events": ["proof.verified"]}
SECRET = "s3cr3t-value-that-is-long-enough"


def test_defaults_and_secret_from_env() -> None:
    s = parse_webhook_settings(
        {"subscriptions": [{**GOOD, "secret_env": "HOOK_SECRET"}]}, {"HOOK_SECRET": SECRET}
    )
    assert s.max_age_seconds == 86400 and s.timeout_seconds == 10
    (sub,) = s.subscriptions
    assert sub.secret == SECRET and sub.id.startswith("cfg-")
    assert SECRET not in repr(s)
    assert parse_webhook_settings(None).subscriptions == ()


@pytest.mark.parametrize(
    ("raw", "setting"),
    [
        ({"max_age_seconds": "1d"}, "webhooks.max_age_seconds"),
        ({"max_age_seconds": 0}, "webhooks.max_age_seconds"),
        ({"batch_size": 1.5}, "webhooks.batch_size"),
        ({"lease_seconds": 15, "timeout_seconds": 10}, "webhooks.lease_seconds"),
        ({"retries": 3}, "webhooks.retries"),
        ({"subscriptions": {}}, "webhooks.subscriptions"),
        ({"subscriptions": [{**GOOD, "url": "ftp://x/", "secret": SECRET}]}, "[0].url"),
        ({"subscriptions": [{**GOOD, "url": "file:///etc/passwd", "secret": SECRET}]}, "[0].url"),
        (
            {"subscriptions": [{**GOOD, "url": "https://u:p@x.example/", "secret": SECRET}]},
            "[0].url",
        ),
        ({"subscriptions": [{**GOOD, "events": ["proof.maybe"], "secret": SECRET}]}, "[0].events"),
        ({"subscriptions": [{**GOOD, "events": [], "secret": SECRET}]}, "[0].events"),
        ({"subscriptions": [{**GOOD}]}, "subscriptions[0]"),
        ({"subscriptions": [{**GOOD, "secret": "short"}]}, "[0].secret"),
        ({"subscriptions": [{**GOOD, "secret_env": "UNSET_VAR_XYZ"}]}, "[0].secret_env"),
        ({"subscriptions": [{**GOOD, "id": "bad id!", "secret": SECRET}]}, "[0].id"),
        (
            {"subscriptions": [{**GOOD, "secret": SECRET}, {**GOOD, "secret": SECRET}]},
            "duplicate id",
        ),
    ],
)
def test_errors_name_the_setting(raw: dict[str, Any], setting: str) -> None:
    with pytest.raises(ConfigError, match=setting.replace("[", r"\[").replace("]", r"\]")) as info:
        parse_webhook_settings(raw, {})
    assert SECRET not in str(info.value)
