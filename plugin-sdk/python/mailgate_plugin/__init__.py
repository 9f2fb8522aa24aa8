"""mailgate-plugin-sdk for Python: what the Rust SDK gives, for componentize-py.

- ``Plugin`` and ``export(MyPlugin)``: the ``Hooks`` export of the world (a manifest with the
  hooks the class implements, ``init`` creating the instance with a ``Config``, hooks that
  default to "continue"). One instance per SMTP session, as in Rust.
- ``Outcome``, ``RcptOutcome``, ``DataOutcome``, ``DeliverOutcome``, ``reply``, ``Route``:
  verdicts, marks (score, tags, reason) and edits, checked like the Rust SDK checks them.
- ``Config``: the plugin's config table (flattened key/value strings) with typed readers.
- ``log``, ``clock``, ``dns``, ``kv``, ``metrics`` (and the raw ``auth_results``,
  ``verify``): the host capabilities.
- ``format_address``, ``parse_address``, ``client_ip``: small conversions.

Values from the host are the dataclasses componentize-py generates from ``wit/``
(``wit_world.imports.types``): ``SessionInfo``, ``Transaction``, ``Recipient``,
``Address`` (``local_part``, ``domain``), ... For an editor or mypy, generate them with
``mailgate-plugin-py bindings``. The ``msg`` of ``on_data``/``on_deliver`` is borrowed for
the call: use its methods (``msg.header_decoded("Subject")``) and never ``with msg:``
(leaving the block drops the handle, which traps for a borrowed one).

Docs: docs/languages.md.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import re
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

from componentize_py_types import Err
from wit_world import exports as _exports
from wit_world.exports import hooks as _h
from wit_world.imports import auth_results, verify  # noqa: F401  (re-exported, raw)
from wit_world.imports import clock as _clock
from wit_world.imports import dns as _dns
from wit_world.imports import kv as _kv
from wit_world.imports import log as _log
from wit_world.imports import metrics as _metrics
from wit_world.imports import types

try:  # written by `mailgate-plugin-py build` from the plugin's pyproject.toml
    import _mailgate_plugin_meta as _meta  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    _meta = None

SDK: str = getattr(_meta, "SDK", "mailgate-plugin-sdk-py 0.1.0")
"""The ``sdk`` field of the manifest."""

__all__ = [
    "SDK", "Plugin", "export", "Config", "ConfigError", "reply", "Outcome", "RcptOutcome",
    "DataOutcome", "DeliverOutcome", "Route", "format_address", "parse_address", "client_ip",
    "ip_to_str", "log", "clock", "dns", "kv", "metrics", "CapabilityError", "auth_results",
    "verify", "types",
]

# ---------------------------------------------------------------------------------- replies

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})$")


def reply(code: int, enhanced: str, text: Union[str, Iterable[str]]) -> types.Reply:
    """An SMTP reply: ``code``, enhanced status (``"5.1.1"``, or ``""`` for none) and text (a
    string with line breaks for several lines, or a list of lines). An enhanced status of
    another class than the code is a plugin bug (``ValueError``)."""
    status = None
    if enhanced:
        m = _ENHANCED.match(enhanced)
        if not m:
            raise ValueError(f"malformed enhanced status code {enhanced!r}")
        if int(m.group(1)) != code // 100:
            raise ValueError(f"enhanced status {enhanced} does not match the class of reply code {code}")
        status = types.EnhancedStatus(subject=int(m.group(2)), detail=int(m.group(3)))
    lines = text.splitlines() if isinstance(text, str) else [str(t) for t in text]
    return types.Reply(code=code, enhanced=status, lines=lines or [""])


# --------------------------------------------------------------------------------- outcomes

def _to_address(a: Union[str, types.Address]) -> types.Address:
    return parse_address(a) if isinstance(a, str) else a


class Outcome:
    """Outcome of ``on_connect``, ``on_helo`` and ``on_mail_from``: a verdict and marks."""

    def __init__(self, verdict: str = "continue", value: Any = None) -> None:
        self.verdict = verdict
        self.value = value
        self.score: List[types.ScoreEntry] = []
        self.tags: List[str] = []
        self.reason: Optional[str] = None

    @classmethod
    def continue_(cls):
        """No opinion; the next plugin decides."""
        return cls("continue")

    @classmethod
    def accept(cls):
        """Accept this stage: the remaining plugins are skipped for this stage only."""
        return cls("accept")

    @classmethod
    def reject(cls, code: int, enhanced: str, text: Union[str, Iterable[str]]):
        """Refuse with a 5xx reply."""
        return cls("reject", reply(code, enhanced, text))

    @classmethod
    def tempfail(cls, code: int, enhanced: str, text: Union[str, Iterable[str]]):
        """Refuse with a 4xx reply."""
        return cls("tempfail", reply(code, enhanced, text))

    @classmethod
    def disconnect(cls, code: int, enhanced: str, text: Union[str, Iterable[str]]):
        """Send the reply (421 or 5xx), then close the connection."""
        return cls("disconnect", reply(code, enhanced, text))

    def with_score(self, rule: str, points: float):
        """Adds a named score entry (``rule``: 1..64 of ``A-Z a-z 0-9 _ - .``)."""
        self.score.append(types.ScoreEntry(rule=rule, points=float(points)))
        return self

    def with_tag(self, tag: str):
        """Adds a tag (1..64 of ``a-z 0-9 _ - . :``)."""
        self.tags.append(tag)
        return self

    def with_reason(self, reason: str):
        """Why (for the log and the decision trace, never sent to the client)."""
        self.reason = reason
        return self

    def _marks(self) -> types.Marks:
        return types.Marks(score=self.score, tags=self.tags, reason=self.reason)

    def _verdict(self) -> types.Verdict:
        v = _VERDICTS.get(self.verdict)
        if v is None:
            raise ValueError(f"verdict {self.verdict} is only possible at DATA")
        return v() if self.value is None else v(self.value)

    def _data_verdict(self) -> types.DataVerdict:
        v = _DATA_VERDICTS[self.verdict]
        return v() if self.value is None else v(self.value)

    def _wit(self) -> _h.Outcome:
        return _h.Outcome(verdict=self._verdict(), marks=self._marks())


_VERDICTS = {
    "continue": types.Verdict_Continue,
    "accept": types.Verdict_Accept,
    "reject": types.Verdict_Reject,
    "tempfail": types.Verdict_Tempfail,
    "disconnect": types.Verdict_Disconnect,
}
_DATA_VERDICTS = {
    "continue": types.DataVerdict_Continue,
    "accept": types.DataVerdict_Accept,
    "reject": types.DataVerdict_Reject,
    "tempfail": types.DataVerdict_Tempfail,
    "disconnect": types.DataVerdict_Disconnect,
    "discard": types.DataVerdict_Discard,
    "quarantine": types.DataVerdict_Quarantine,
}


class RcptOutcome(Outcome):
    """Outcome of ``on_rcpt_to``: an ``Outcome`` plus recipient edits."""

    def __init__(self, verdict: str = "continue", value: Any = None) -> None:
        super().__init__(verdict, value)
        self.recipient_edits: List[types.RecipientEdit] = []

    def add_recipient(self, address: Union[str, types.Address]):
        """Adds a recipient (``"a@b"`` or an ``Address``)."""
        self.recipient_edits.append(types.RecipientEdit_Add(_to_address(address)))
        return self

    def remove_recipient(self, address: Union[str, types.Address]):
        """Removes a recipient (at RCPT TO: the one being decided is accepted silently)."""
        self.recipient_edits.append(types.RecipientEdit_Remove(_to_address(address)))
        return self

    def rewrite_recipient(self, original: Union[str, types.Address], replacement: Union[str, types.Address]):
        """Delivers to ``replacement`` instead of ``original``."""
        self.recipient_edits.append(
            types.RecipientEdit_Rewrite(
                types.AddressRewrite(original=_to_address(original), replacement=_to_address(replacement))
            )
        )
        return self

    def _wit(self) -> _h.RcptOutcome:
        return _h.RcptOutcome(verdict=self._verdict(), marks=self._marks(), recipient_edits=self.recipient_edits)


class DataOutcome(RcptOutcome):
    """Outcome of ``on_data``: an ``RcptOutcome`` plus header edits, and
    ``discard``/``quarantine``."""

    def __init__(self, verdict: str = "continue", value: Any = None) -> None:
        super().__init__(verdict, value)
        self.header_edits: List[types.HeaderEdit] = []

    @classmethod
    def discard(cls):
        """Answer 250 and drop the message (logged)."""
        return cls("discard")

    @classmethod
    def quarantine(cls, reason: str):
        """Answer 250 and keep the message in the quarantine store; ``reason`` is for the
        admin."""
        return cls("quarantine", str(reason))

    def add_header(self, name: str, value: str):
        """Adds a header field below the existing ones."""
        self.header_edits.append(types.HeaderEdit_Append(types.Header(name=name, value=str(value))))
        return self

    def prepend_header(self, name: str, value: str):
        """Adds a header field at the top."""
        self.header_edits.append(types.HeaderEdit_Prepend(types.Header(name=name, value=str(value))))
        return self

    def remove_header(self, name: str, occurrence: Optional[int] = None):
        """Removes the fields named ``name`` (all, or the ``occurrence``-th, 0-based)."""
        self.header_edits.append(types.HeaderEdit_Remove(types.HeaderRef(name=name, occurrence=occurrence)))
        return self

    def replace_header(self, name: str, value: str, occurrence: Optional[int] = None):
        """Replaces the value of the fields named ``name`` (all, or the ``occurrence``-th)."""
        self.header_edits.append(
            types.HeaderEdit_Replace(
                types.HeaderReplace(target=types.HeaderRef(name=name, occurrence=occurrence), value=str(value))
            )
        )
        return self

    def _wit(self) -> _h.DataOutcome:
        return _h.DataOutcome(
            verdict=self._data_verdict(),
            marks=self._marks(),
            header_edits=self.header_edits,
            recipient_edits=self.recipient_edits,
        )


class Route:
    """Where one recipient goes (for ``DeliverOutcome.route``)."""

    @staticmethod
    def mx() -> types.Route:
        return types.Route_Mx()

    @staticmethod
    def local() -> types.Route:
        return types.Route_Local()

    @staticmethod
    def discard() -> types.Route:
        return types.Route_Discard()

    @staticmethod
    def relay(host: str, port: int = 25, tls: str = "opportunistic") -> types.Route:
        """``tls``: ``"opportunistic"``, ``"required"`` or ``"disabled"``."""
        return types.Route_Relay(types.RelayHost(host=host, port=port, tls=types.TlsPolicy[tls.upper()]))

    @staticmethod
    def bounce(code: int, enhanced: str, text: str) -> types.Route:
        return types.Route_Bounce(reply(code, enhanced, text))

    @staticmethod
    def defer(code: int, enhanced: str, text: str) -> types.Route:
        return types.Route_Defer(reply(code, enhanced, text))


class DeliverOutcome:
    """Outcome of ``on_deliver``: routes for some recipients."""

    def __init__(self) -> None:
        self.routes: List[types.RecipientRoute] = []
        self.reason: Optional[str] = None

    @classmethod
    def none(cls):
        """No routes: every recipient gets the next plugin's or the default route."""
        return cls()

    def route(self, recipient: Union[str, types.Address], route: types.Route):
        self.routes.append(types.RecipientRoute(recipient=_to_address(recipient), route=route))
        return self

    def with_reason(self, reason: str):
        self.reason = reason
        return self

    def _wit(self) -> _h.DeliverOutcome:
        return _h.DeliverOutcome(routes=self.routes, reason=self.reason)


# ---------------------------------------------------------------------------------- address

def format_address(address: Optional[types.Address]) -> str:
    """``local@domain`` of an address (``<>`` for none)."""
    if address is None:
        return "<>"
    return f"{address.local_part}@{address.domain}" if address.domain else address.local_part


def parse_address(text: str) -> types.Address:
    """An ``Address`` from ``local@domain`` (split at the last ``@``; domain lowercased)."""
    local, at, domain = text.rpartition("@")
    if not at:
        return types.Address(local_part=text, domain="")
    return types.Address(local_part=local, domain=domain.lower())


def ip_to_str(ip: types.IpAddress) -> str:
    """The text form of a WIT ``ip-address``."""
    if isinstance(ip, types.IpAddress_Ipv4):
        return ".".join(str(b) for b in ip.value)
    return str(ipaddress.IPv6Address(b"".join(g.to_bytes(2, "big") for g in ip.value)))


def _to_ip(text: str) -> types.IpAddress:
    a = ipaddress.ip_address(text)
    if a.version == 4:
        return types.IpAddress_Ipv4(tuple(a.packed))
    p = a.packed
    return types.IpAddress_Ipv6(tuple(int.from_bytes(p[i:i + 2], "big") for i in range(0, 16, 2)))


def client_ip(session: types.SessionInfo) -> str:
    """The connected client's address as text."""
    return ip_to_str(session.client.address.ip)


# ----------------------------------------------------------------------------------- config

class ConfigError(Exception):
    """A config value that is missing or does not parse; ``init`` answers its message,
    ``config key `KEY`: MESSAGE`` as in the Rust SDK."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config key `{key}`: {message}")
        self.key = key


class Config:
    """The plugin's config table, flattened by the host (nested tables as dotted keys, arrays
    as JSON text)."""

    def __init__(self, pairs: Iterable[Tuple[str, str]]) -> None:
        self.values: Dict[str, str] = dict(pairs)

    def get(self, key: str) -> Optional[str]:
        """The raw value, or ``None``."""
        return self.values.get(key)

    def keys(self) -> List[str]:
        return list(self.values)

    def str(self, key: str, default: Optional[str] = None) -> Optional[str]:
        """The value, or ``default`` when absent."""
        return self.values.get(key, default)

    def require(self, key: str) -> str:
        """The value; a ``ConfigError`` when absent."""
        if key not in self.values:
            raise ConfigError(key, "is required")
        return self.values[key]

    def int(self, key: str, default: Optional[int] = None) -> Optional[int]:
        """An integer, or ``default`` when absent."""
        v = self.values.get(key)
        if v is None:
            return default
        try:
            return int(v.strip())
        except ValueError:
            raise ConfigError(key, f"expected an integer, got {json.dumps(v)}") from None

    def float(self, key: str, default: Optional[float] = None) -> Optional[float]:
        """A number, or ``default`` when absent."""
        v = self.values.get(key)
        if v is None:
            return default
        try:
            f = float(v.strip())
        except ValueError:
            raise ConfigError(key, f"expected a number, got {json.dumps(v)}") from None
        if f != f or f in (float("inf"), float("-inf")):
            raise ConfigError(key, f"expected a finite number, got {json.dumps(v)}")
        return f

    def bool(self, key: str, default: Optional[bool] = None) -> Optional[bool]:
        """``true/false``, ``yes/no``, ``on/off``, ``1/0``, or ``default`` when absent."""
        v = self.values.get(key)
        if v is None:
            return default
        t = v.strip().lower()
        if t in ("true", "yes", "on", "1"):
            return True
        if t in ("false", "no", "off", "0"):
            return False
        raise ConfigError(key, f"expected true or false, got {json.dumps(v)}")

    def list(self, key: str) -> List[str]:
        """A JSON array of scalars as strings, a plain value as a one-element list, ``[]``
        when absent."""
        v = self.values.get(key)
        if v is None:
            return []
        if not v.lstrip().startswith("["):
            return [v]
        try:
            parsed = json.loads(v)
        except ValueError as e:
            raise ConfigError(key, f"expected a list: {e}") from None
        out = []
        for x in parsed:
            if x is None or isinstance(x, (dict, list)):
                raise ConfigError(key, "expected a list of scalars")
            out.append(json.dumps(x) if isinstance(x, bool) else str(x))
        return out

    def section(self, prefix: str) -> "Config":
        """The keys under ``prefix.``, without the prefix."""
        p = prefix + "."
        return Config((k[len(p):], v) for k, v in self.values.items() if k.startswith(p))

    def deny_unknown(self, known: Iterable[str]) -> None:
        """A ``ConfigError`` for the first key that is not in ``known`` (typos)."""
        known = list(known)
        for k in self.values:
            if k not in known and k.split(".")[0] not in known:
                raise ConfigError(k, f"unknown key (expected one of: {', '.join(known)})")


# ----------------------------------------------------------------------------- capabilities

def _fields(fields: Optional[Dict[str, Any]]) -> List[Tuple[str, str]]:
    return [(k, str(v)) for k, v in (fields or {}).items()]


class log:
    """Log lines in the gateway's log (needs the ``log`` grant; dropped otherwise).
    Keyword arguments are fields: ``log.info("checked", rcpt="a@b")``."""

    Level = _log.Level

    @staticmethod
    def enabled(level: "_log.Level") -> bool:
        return _log.enabled(level)

    @staticmethod
    def trace(message: str, **fields: Any) -> None:
        _log.log(_log.Level.TRACE, str(message), _fields(fields))

    @staticmethod
    def debug(message: str, **fields: Any) -> None:
        _log.log(_log.Level.DEBUG, str(message), _fields(fields))

    @staticmethod
    def info(message: str, **fields: Any) -> None:
        _log.log(_log.Level.INFO, str(message), _fields(fields))

    @staticmethod
    def warn(message: str, **fields: Any) -> None:
        _log.log(_log.Level.WARN, str(message), _fields(fields))

    @staticmethod
    def error(message: str, **fields: Any) -> None:
        _log.log(_log.Level.ERROR, str(message), _fields(fields))


class CapabilityError(Exception):
    """A capability call that answered an error: ``kind`` is the WIT error case
    (``denied``, ``nxdomain``, ...), ``detail`` its text if it has one."""

    def __init__(self, capability: str, error: Any) -> None:
        if isinstance(error, enum.Enum):  # `clock-error`
            kind, detail = error.name.lower().replace("_", "-"), None
        else:  # a variant case: `KvError_Denied()`, `DnsError_Other("...")`
            case = type(error).__name__.split("_", 1)[-1]
            kind = re.sub(r"(?<!^)(?=[A-Z])", "-", case).lower()
            detail = getattr(error, "value", None)
        super().__init__(f"{capability}: {kind}" + (f": {detail}" if detail is not None else ""))
        self.kind = kind
        self.detail = detail


def _call(capability: str, f, *args):
    try:
        return f(*args)
    except Err as e:
        raise CapabilityError(capability, e.value) from None


class clock:
    """Time (needs the ``clock`` grant)."""

    @staticmethod
    def now_ms() -> int:
        """Milliseconds since the Unix epoch."""
        return _call("clock", _clock.now)

    @staticmethod
    def monotonic_ns() -> int:
        """Nanoseconds from an arbitrary point."""
        return _call("clock", _clock.monotonic_now)


class dns:
    """DNS through the gateway's resolver (needs the ``dns`` grant). Errors raise a
    ``CapabilityError`` whose ``kind`` is ``nxdomain``, ``timeout``, ``denied``, ..."""

    @staticmethod
    def txt(name: str) -> List[str]:
        return _call("dns", _dns.lookup_txt, name)

    @staticmethod
    def a(name: str) -> List[str]:
        return [ip_to_str(ip) for ip in _call("dns", _dns.lookup_a, name)]

    @staticmethod
    def aaaa(name: str) -> List[str]:
        return [ip_to_str(ip) for ip in _call("dns", _dns.lookup_aaaa, name)]

    @staticmethod
    def mx(name: str) -> List[_dns.MxRecord]:
        return _call("dns", _dns.lookup_mx, name)

    @staticmethod
    def ptr(ip: Union[str, types.IpAddress]) -> List[str]:
        return _call("dns", _dns.lookup_ptr, _to_ip(ip) if isinstance(ip, str) else ip)


class kv:
    """The key-value store (needs the ``kv`` grant)."""

    @staticmethod
    def get(key: str) -> Optional[bytes]:
        return _call("kv", _kv.get, key)

    @staticmethod
    def get_str(key: str) -> Optional[str]:
        v = _call("kv", _kv.get, key)
        return None if v is None else bytes(v).decode("utf-8", "replace")

    @staticmethod
    def set(key: str, value: Union[str, bytes], ttl_secs: Optional[int] = None) -> None:
        _call("kv", _kv.set, key, value.encode() if isinstance(value, str) else value, ttl_secs)

    @staticmethod
    def set_if_absent(key: str, value: Union[str, bytes], ttl_secs: Optional[int] = None) -> bool:
        """``True`` if this call set it."""
        return _call("kv", _kv.set_if_absent, key, value.encode() if isinstance(value, str) else value, ttl_secs)

    @staticmethod
    def delete(key: str) -> bool:
        return _call("kv", _kv.delete, key)

    @staticmethod
    def increment(key: str, delta: int = 1, ttl_secs: Optional[int] = None) -> int:
        """Adds ``delta`` and returns the new value."""
        return _call("kv", _kv.increment, key, delta, ttl_secs)


class metrics:
    """Metrics (needs the ``metrics`` grant; does nothing otherwise). ``labels`` is a dict."""

    @staticmethod
    def counter_add(name: str, labels: Optional[Dict[str, Any]] = None, delta: int = 1) -> None:
        _metrics.counter_add(name, _fields(labels), delta)

    @staticmethod
    def gauge_set(name: str, labels: Optional[Dict[str, Any]], value: float) -> None:
        _metrics.gauge_set(name, _fields(labels), float(value))

    @staticmethod
    def histogram_observe(name: str, labels: Optional[Dict[str, Any]], value: float) -> None:
        _metrics.histogram_observe(name, _fields(labels), float(value))


# ----------------------------------------------------------------------------------- export

class Plugin:
    """Base class of a plugin. ``__init__(self, config)`` runs in ``init`` (raise, e.g. a
    ``ConfigError``, to refuse the config); the instance receives that session's hooks.
    Override the hooks the plugin needs: the manifest lists exactly those, so the host
    calls only them. A hook returning ``None`` is "continue"."""

    def __init__(self, config: Config) -> None:
        pass

    def on_connect(self, session: types.SessionInfo) -> Optional[Outcome]:
        return None

    def on_helo(self, session: types.SessionInfo, helo: types.HeloInfo) -> Optional[Outcome]:
        return None

    def on_mail_from(
        self, session: types.SessionInfo, sender: Optional[types.Address], params: types.MailParams
    ) -> Optional[Outcome]:
        return None

    def on_rcpt_to(
        self, session: types.SessionInfo, txn: types.Transaction, rcpt: types.Recipient
    ) -> Optional[RcptOutcome]:
        return None

    def on_data(self, session: types.SessionInfo, txn: types.Transaction, msg: Any) -> Optional[DataOutcome]:
        return None

    def on_deliver(self, delivery: _h.DeliveryInfo, txn: types.Transaction, msg: Any) -> Optional[DeliverOutcome]:
        return None


_HOOKS = [
    ("on_connect", _h.HookSet.CONNECT),
    ("on_helo", _h.HookSet.HELO),
    ("on_mail_from", _h.HookSet.MAIL_FROM),
    ("on_rcpt_to", _h.HookSet.RCPT_TO),
    ("on_data", _h.HookSet.DATA),
    ("on_deliver", _h.HookSet.DELIVER),
]


def _convert(result: Any, kind: type) -> Any:
    if result is None:
        return kind()._wit()
    if isinstance(result, (Outcome, DeliverOutcome)):
        if kind is not Outcome and isinstance(result, Outcome) and not isinstance(result, kind):
            # An Outcome where an RcptOutcome or DataOutcome is expected: no edits.
            widened = kind(result.verdict, result.value)
            widened.score, widened.tags, widened.reason = result.score, result.tags, result.reason
            result = widened
        return result._wit()
    return result  # already the WIT record


def export(plugin: type, name: Optional[str] = None, version: Optional[str] = None) -> type:
    """The ``Hooks`` export for a plugin class: ``Hooks = export(MyPlugin)`` in the module
    given to ``mailgate-plugin-py build``. ``name`` and ``version`` default to the plugin's
    pyproject.toml (``[project]``)."""
    hooks = _h.HookSet(0)
    for method, flag in _HOOKS:
        own = getattr(plugin, method, None)
        if callable(own) and own is not getattr(Plugin, method):
            hooks |= flag
    info = _h.PluginInfo(
        name=name or getattr(_meta, "NAME", None) or plugin.__name__.lower(),
        version=version or getattr(_meta, "VERSION", None) or "0.0.0",
        sdk=SDK,
        hooks=hooks,
    )
    state: List[Any] = [None]

    def instance() -> Any:
        if state[0] is None:
            raise RuntimeError("hook called before init")
        return state[0]

    class Hooks(_exports.Hooks):
        def manifest(self) -> _h.PluginInfo:
            return info

        def init(self, config: List[Tuple[str, str]]) -> None:
            try:
                state[0] = plugin(Config(config))
            except Exception as e:  # the message refuses the config
                raise Err(str(e) or type(e).__name__) from None

        def on_connect(self, session):
            return _convert(instance().on_connect(session), Outcome)

        def on_helo(self, session, helo):
            return _convert(instance().on_helo(session, helo), Outcome)

        def on_mail_from(self, session, sender, params):
            return _convert(instance().on_mail_from(session, sender, params), Outcome)

        def on_rcpt_to(self, session, txn, rcpt):
            return _convert(instance().on_rcpt_to(session, txn, rcpt), RcptOutcome)

        def on_data(self, session, txn, msg):
            return _convert(instance().on_data(session, txn, msg), DataOutcome)

        def on_deliver(self, delivery, txn, msg):
            return _convert(instance().on_deliver(delivery, txn, msg), DeliverOutcome)

    return Hooks
