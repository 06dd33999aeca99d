"""
Where C{twistd wsheart}'s options come from besides the command line, and
how they are shown: the groups they belong to, a TOML file (C{--config}),
C{WSHEART_*} environment variables, and the effective configuration
(C{--print-config}).

Precedence: the file, then the environment, then the command line - each
overrides the one before.  A repeatable option (C{--endpoint}, ...) is
taken whole from the last source that sets it, not added up.

The file's keys are the long option names, at the top level or in a table
named after their group::

    endpoint = ["tcp:8080"]

    [heartbeat]
    ping-interval = 5
    max-missed = 2

The environment's names are the option's, upper case, with C{WSHEART_}
before and C{_} for C{-}: C{WSHEART_PING_INTERVAL=5}; a repeatable
option's values are separated by spaces, a flag is C{1}/C{true}/C{yes}
(or C{0}/C{false}/C{no}).  C{WSHEART_CONFIG} names the file when
C{--config} does not.
"""

from __future__ import annotations

import difflib
import json
import re
import sys
from typing import Any, Iterable, Mapping, Optional
from urllib.parse import urlsplit, urlunsplit

from twisted.python import usage

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# (table name in the file, title in --help, its options), in --help order.
GROUPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "listeners",
        "Listeners and TLS",
        ("endpoint", "tls-endpoint", "tls-key", "tls-cert", "backlog", "handshake-timeout", "close-timeout", "no-pages"),
    ),
    ("heartbeat", "Heartbeat", ("ping-interval", "ping-timeout", "max-missed", "app-ping", "app-pong")),
    ("messages", "Messages", ("echo-prefix", "handler", "max-message-size", "max-send-buffer")),
    (
        "channels",
        "Channels (wsheart.v1) and their HTTP API",
        (
            "no-channels", "history-size", "history-age", "max-channels", "max-client-channels",
            "max-idempotency-keys", "max-subscriptions", "client-publish", "quiet-presence", "api-token-file",
        ),
    ),  # fmt: skip
    ("redis", "Redis (channels shared between processes)", ("redis", "redis-prefix", "redis-timeout")),
    (
        "auth",
        "Authentication",
        (
            "auth", "jwt-key", "jwt-jwks-url", "jwt-jwks-refresh", "jwt-algorithms", "jwt-audience", "jwt-issuer",
            "jwt-leeway", "auth-timeout", "anonymous-channels", "demo-token-url",
        ),
    ),  # fmt: skip
    (
        "limits",
        "Limits, admission and the door",
        (
            "max-connections", "accept-rate", "accept-ramp", "max-connections-per-address", "max-connections-per-user",
            "max-pending-per-address", "client-rate", "subscribe-rate", "allowed-origin", "allow-missing-origin",
            "trusted-proxy", "forwarded-header",
        ),
    ),  # fmt: skip
    (
        "deflate",
        "Compression (permessage-deflate)",
        (
            "deflate", "deflate-min-size", "deflate-window-bits", "deflate-client-window-bits", "deflate-mem-level",
            "deflate-server-context-takeover", "deflate-client-context-takeover",
        ),
    ),  # fmt: skip
    (
        "operations",
        "Operations",
        (
            "admin-endpoint", "node-id", "drain-time", "drain-retry-after", "drain-reconnect-rate", "max-reactor-lag",
            "log-format", "config", "print-config", "version", "help",
        ),
    ),  # fmt: skip
)

# Options only the command line may give.
COMMAND_LINE_ONLY = frozenset({"config", "print-config", "version", "help"})
# Options whose values may be read by whoever reads the configuration:
# their secrets are masked by --print-config.
_URLS_WITH_SECRETS = frozenset({"redis"})


class OptionKinds:
    """
    What kind each long option of a L{usage.Options} is: a flag, a
    parameter, or a repeatable parameter (one with an C{opt_} method that
    collects values in a list).
    """

    def __init__(self, options: usage.Options, repeatable: Iterable[str]) -> None:
        self.flags = {o for o in options.longOpt if not o.endswith("=")}
        self.parameters = {o[:-1] for o in options.longOpt if o.endswith("=")}
        self.repeatable = frozenset(repeatable)
        self.synonyms = dict(options.synonyms)

    @property
    def all(self) -> set[str]:
        return self.flags | self.parameters

    def check(self, name: str, where: str) -> None:
        if name in COMMAND_LINE_ONLY:
            raise usage.UsageError(f"{where}: {name} can only be given on the command line")
        if name not in self.all:
            close = difflib.get_close_matches(name, sorted(self.all), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise usage.UsageError(f"{where}: unknown option {name!r}{hint}")


def read_file(path: str, kinds: OptionKinds) -> dict[str, Any]:
    """
    The options a TOML file sets, by long name, checked against C{kinds}.
    """
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise usage.UsageError(f"--config {path}: {e.strerror or e}")
    except tomllib.TOMLDecodeError as e:
        raise usage.UsageError(f"--config {path}: not valid TOML: {e}")
    tables = {name: set(members) for name, _, members in GROUPS}
    found: dict[str, Any] = {}

    def take(name: str, value: Any, where: str) -> None:
        kinds.check(name, where)
        if name in found:
            raise usage.UsageError(f"{where}: {name} is set twice")
        found[name] = value

    for key, value in document.items():
        if isinstance(value, dict):
            if key not in tables:
                raise usage.UsageError(f"--config {path}: unknown table [{key}]; the tables are {', '.join(sorted(tables))}")
            for name, inner in value.items():
                if name in kinds.all and name not in tables[key]:
                    group = next(g for g, _, members in GROUPS if name in members)
                    raise usage.UsageError(f"--config {path}: {name} belongs in [{group}], not [{key}]")
                take(name, inner, f"--config {path} [{key}]")
        else:
            take(key, value, f"--config {path}")
    return found


def file_arguments(values: Mapping[str, Any], kinds: OptionKinds, path: str) -> list[tuple[str, list[str]]]:
    """
    The file's settings as command-line words, one entry per option.
    """
    out = []
    for name, value in values.items():
        where = f"--config {path}: {name}"
        if name in kinds.flags:
            if not isinstance(value, bool):
                raise usage.UsageError(f"{where} is a switch: true or false, got {value!r}")
            out.append((name, [f"--{name}"] if value else []))
        elif name in kinds.repeatable:
            items = value if isinstance(value, list) else [value]
            if not all(isinstance(item, str) for item in items):
                raise usage.UsageError(f"{where} takes a string or a list of strings, got {value!r}")
            out.append((name, [word for item in items for word in (f"--{name}", item)]))
        else:
            if isinstance(value, bool):
                value = "yes" if value else "no"
            elif isinstance(value, (list, dict)):
                raise usage.UsageError(f"{where} takes one value, got {value!r}")
            out.append((name, [f"--{name}", str(value)]))
    return out


def environment_arguments(environ: Mapping[str, str], kinds: OptionKinds) -> list[tuple[str, list[str]]]:
    """
    The C{WSHEART_*} variables that name an option, as command-line words.
    Others (the CLI's C{WSHEART_API_TOKEN}, ...) are not options: ignored.
    """
    out = []
    for name in sorted(kinds.all - COMMAND_LINE_ONLY):
        variable = "WSHEART_" + name.upper().replace("-", "_")
        if variable not in environ:
            continue
        value = environ[variable]
        if name in kinds.flags:
            if value.strip().lower() in ("1", "true", "yes", "on"):
                out.append((name, [f"--{name}"]))
            elif value.strip().lower() in ("", "0", "false", "no", "off"):
                out.append((name, []))
            else:
                raise usage.UsageError(f"{variable} is a switch: 1/true/yes or 0/false/no, got {value!r}")
        elif name in kinds.repeatable:
            out.append((name, [word for item in value.split() for word in (f"--{name}", item)]))
        else:
            out.append((name, [f"--{name}", value]))
    return out


def set_on_command_line(argv: list[str], kinds: OptionKinds) -> set[str]:
    """
    The long names of the options C{argv} sets (roughly parsed: enough to
    know which repeatable options it takes over).
    """
    named = set()
    for word in argv:
        if word.startswith("--"):
            named.add(word[2:].split("=", 1)[0])
        elif word.startswith("-") and len(word) >= 2 and word[1] in kinds.synonyms:
            named.add(kinds.synonyms[word[1]])
    return named


def config_path(argv: list[str], environ: Mapping[str, str]) -> Optional[str]:
    for i, word in enumerate(argv):
        if word == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith("--config="):
            return word.split("=", 1)[1]
    return environ.get("WSHEART_CONFIG") or None


def merged_arguments(argv: list[str], environ: Mapping[str, str], kinds: OptionKinds) -> list[str]:
    """
    C{argv} with what the file and the environment set in front of it, so
    that the command line (parsed last, the last value winning) overrides
    both; a repeatable option comes only from the last source that sets it.
    """
    path = config_path(argv, environ)
    sources = []
    if path is not None:
        sources.append(file_arguments(read_file(path, kinds), kinds, path))
    sources.append(environment_arguments(environ, kinds))
    taken = set_on_command_line(argv, kinds)
    words: list[str] = []
    for later, source in reversed(list(enumerate(sources))):
        chosen = []
        for name, option_words in source:
            if (name in kinds.repeatable or name in kinds.flags) and name in taken:
                continue  # a later source has it (a switch too: it may turn it off)
            chosen.append((name, option_words))
        taken |= {name for name, _ in source}
        words = [w for _, option_words in chosen for w in option_words] + words
    return words + argv


def render(values: Mapping[str, Any], kinds: OptionKinds) -> str:
    """
    The effective configuration as a TOML file C{--config} reads back:
    every option, by group; unset ones as comments; secrets masked.
    """
    lines = ["# The effective configuration of twistd wsheart (--print-config)."]
    for table, title, members in GROUPS:
        lines += ["", f"# {title}", f"[{table}]"]
        for name in members:
            if name in COMMAND_LINE_ONLY or name not in kinds.all:
                continue
            value = values.get(name)
            if name in kinds.flags:
                lines.append(f"{name} = {'true' if value else 'false'}")
            elif value is None:
                lines.append(f"# {name} = (not set)")
            elif name in kinds.repeatable:
                lines.append(f"{name} = [{', '.join(_toml_string(str(v)) for v in value)}]")
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                text = str(value)
                lines.append(f"{name} = {_toml_string(_masked(text) if name in _URLS_WITH_SECRETS else text)}")
            else:
                lines.append(f"{name} = {value!r}")
    return "\n".join(lines) + "\n"


def _toml_string(text: str) -> str:
    # A TOML basic string escapes as JSON does, \uXXXX included.
    return json.dumps(text)


def _masked(url: str) -> str:
    parts = urlsplit(url)
    if not parts.password:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def grouped_usage(options: usage.Options, width: int) -> str:
    """
    C{--help}'s option list, by group, in the order of L{GROUPS}.
    """
    long_to_short = {value: key for key, value in options.synonyms.items() if key != value and len(key) == 1}
    by_name = {}
    for opt in options.longOpt:
        name = opt[:-1] if opt.endswith("=") else opt
        by_name[name] = {
            "long": name,
            "short": long_to_short.get(name),
            "doc": options.docs[name],
            "optType": "parameter" if opt.endswith("=") else "flag",
            "default": options.defaults.get(name),
            "dispatch": options._dispatch.get(name),
        }
    text = []
    listed: set[str] = set()
    for _, title, members in GROUPS:
        dicts = [by_name[name] for name in members if name in by_name]
        listed.update(members)
        if dicts:
            text.append(f"{title}:\n" + "".join(usage.docMakeChunks(dicts, width)))
    # twistd puts ". " and the value's rule after a text that ends with a
    # full stop already.
    rest = [by_name[name] for name in sorted(set(by_name) - listed)]
    if rest:
        text.append("Other:\n" + "".join(usage.docMakeChunks(rest, width)))
    return re.sub(r"(?<!\.)\.\.(\s)", r".\1", "\n".join(text))
