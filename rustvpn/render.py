"""`rustvpn render`: the config template that Ansible uses, rendered from a mapping of settings,
so hand-written and Ansible-written configs come from one source and never drift."""

from __future__ import annotations

from importlib import resources
from typing import Any

import jinja2
import yaml

from rustvpn.errors import ConfigError

TEMPLATE = "tunnel.yaml.j2"


def template_text(name: str = TEMPLATE) -> str:
    return resources.files("rustvpn").joinpath("templates", name).read_text(encoding="utf-8")


def render_tunnel(tunnel: dict[str, Any]) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    return env.from_string(template_text()).render(tunnel=tunnel)


def render_vars_file(path: str) -> str:
    """Render the template from a YAML file holding the tunnel's settings (``name`` optional)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    data = data.get("tunnel", data) if isinstance(data.get("tunnel"), dict) else data
    try:
        return render_tunnel(data)
    except jinja2.TemplateError as exc:
        raise ConfigError(f"{path}: cannot render: {exc}") from None
