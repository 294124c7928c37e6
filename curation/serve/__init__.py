"""``curate serve``: the HTTP server (Label Studio ML backend, webhooks, metrics). The app is ``app.create_app``;
``run`` checks the security settings and serves it with uvicorn."""

from __future__ import annotations

import ipaddress
import logging

from curation.config import Settings
from curation.errors import ConfigError


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_security(settings: Settings) -> None:
    """A server reachable from other machines must ask for credentials: basic auth and the webhook secret."""
    cfg = settings.serve
    if (cfg.username is None) != (cfg.password is None):
        raise ConfigError("serve.username and serve.password go together: set both or neither")
    if is_loopback(cfg.host):
        return
    missing = [
        name
        for name, value in (
            ("serve.username", cfg.username),
            ("serve.password", cfg.password),
            ("serve.webhook_secret", cfg.webhook_secret),
        )
        if not value
    ]
    if missing:
        raise ConfigError(
            f"curate serve on the non-loopback address {cfg.host} needs HTTP basic auth and a webhook secret: "
            f"set {', '.join(missing)} (e.g. CURATE_SERVE__PASSWORD)"
        )


def run(settings: Settings) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM end it cleanly)."""
    check_security(settings)
    import uvicorn

    from curation.serve.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    try:
        uvicorn.run(app, host=settings.serve.host, port=settings.serve.port, log_level="info", access_log=True)
    finally:
        app.state.turns.stop()
        app.state.store.close()
