"""The checks of a ``target = "webhook"`` pipeline's settings (weir.config calls them).

Pure. Each problem is one line naming its setting; none shows the secret (nor a URL unredacted).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from weir.deliver.settings import DeliverPipelineSettings
from weir.deliver.webhook_filter import filter_problems
from weir.redact import redact_url

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def webhook_problems(pipe: DeliverPipelineSettings, *, claim_idle: float) -> list[str]:
    """What is wrong with a webhook pipeline, one line each ("<setting>: <why>"); empty when nothing."""
    problems = [f"url: {why}" for why in _url_problems(pipe.url)]
    if pipe.secret and pipe.secret_env:
        problems.append("secret, secret_env: set one of them, not both")
    elif not pipe.secret and not pipe.secret_env:
        problems.append("secret: required (the key requests are signed with), or secret_env naming the "
                        "environment variable that holds it")
    if pipe.secret_env and not _ENV_NAME.match(pipe.secret_env):
        problems.append(f"secret_env: expected an environment variable's name, got {pipe.secret_env!r}")
    for key in ("timeout", "retry_max", "breaker_reset"):
        if getattr(pipe, key) <= 0:
            problems.append(f"{key}: must be positive, got {getattr(pipe, key)}")
    if pipe.retry_initial < 0 or pipe.retry_initial > pipe.retry_max:
        problems.append(f"retry_initial: must be between 0 and retry_max ({pipe.retry_max:g}), got {pipe.retry_initial}")
    if pipe.breaker_max_reset < pipe.breaker_reset:
        problems.append(f"breaker_max_reset: must be at least breaker_reset ({pipe.breaker_reset:g}), "
                        f"got {pipe.breaker_max_reset}")
    for key in ("concurrency", "attempts", "breaker_failures", "events_per_request"):
        if getattr(pipe, key) < 1:
            problems.append(f"{key}: must be at least 1, got {getattr(pipe, key)}")
    if pipe.timeout * 3 > claim_idle:
        # A batch's deliveries are acknowledged within claim_idle / 3: one request must fit in it.
        problems.append(f"timeout: must be at most deliver.claim_idle / 3 ({claim_idle / 3:g}), got {pipe.timeout}")
    return problems + filter_problems(pipe)


def _url_problems(url: str) -> list[str]:
    expected = f"expected the endpoint's http:// or https:// URL, got {redact_url(url)!r}"
    try:
        parts = urlsplit(url)
        parts.port  # a port that is not a number raises here, not at the first POST
    except ValueError:
        return [expected]
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return [expected]
    if parts.username is not None or parts.password is not None:
        # httpx would send them as a Basic Authorization header, which an endpoint echoing its
        # request could put in a refusal's reason: requests are authenticated by their signature.
        return [f"credentials in the URL are not taken (requests are authenticated by their HMAC signature), "
                f"got {redact_url(url)!r}"]
    return []
