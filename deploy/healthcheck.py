"""The container's health check: `GET /readyz` where the bot listens, read from its settings.

Docker runs it inside the container. It reads WEB_PORT and WEB_HOST the way `headshot-bot run`
does, so a port other than the image's 8080 is followed. Exit 0: healthy, which is ready (its
database can be written, its chat gateways are connected); 1: not. A generator outage leaves it
ready: `/readyz` shows it as "degraded" in its body.
"""

from __future__ import annotations

import sys
import urllib.request

from bot.config import ConfigError, load_settings

# A server bound to every address answers on loopback.
WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104


def health_url() -> str:
    settings = load_settings()
    host = WILDCARDS.get(settings.web_host, settings.web_host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.web_port}/readyz"


def main() -> int:
    try:
        url = health_url()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(url, timeout=4) as answer:  # noqa: S310 (http, our own)
            return 0 if answer.status == 200 else 1
    except OSError as exc:  # refused, timed out, or an HTTP error status such as 503
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
