"""Configuration: resolves every setting once, from TOML (stdlib tomllib) over built-in defaults.

System mode reads `/etc/sdd/sdd.toml`; user mode (`sdd --user`) uses XDG paths and the session bus.
Unknown keys and wrong types are errors that name the key and the file; nothing half-valid is returned.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SYSTEM_CONFIG = Path("/etc/sdd/sdd.toml")
SYSTEM_TEMPLATES = Path("/usr/share/sdd/templates")


class ConfigError(Exception):
    """The configuration is invalid; `errors` lists every problem, each naming the file and key."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class PathsConfig:
    spool: Path
    state: Path
    socket: Path
    workflows: tuple[Path, ...]


@dataclass(frozen=True)
class ApiConfig:
    socket_mode: str = "0660"
    socket_group: str = "sdd"
    read_groups: tuple[str, ...] = ()
    max_connections: int = 256
    max_connections_per_uid: int = 32  # one user's clients cannot take every slot (root is exempt)
    idle_timeout: float = 300.0  # seconds a connection may stay silent (subscribers excepted)


@dataclass(frozen=True)
class DbusConfig:
    bus: str = "system"  # "system" | "session" | "none" | a D-Bus address


@dataclass(frozen=True)
class EngineConfig:
    max_concurrent_runs: int = 16
    history_retention_days: int = 90
    dedup_window: float = 60.0  # seconds: same (workflow, file, threat) inside it is a duplicate
    shutdown_grace: float = 20.0  # seconds SIGTERM lets running runs finish
    max_subworkflow_depth: int = 8


@dataclass(frozen=True)
class IntakeConfig:
    max_file_size: int = 1024 * 1024
    rescan_interval: float = 30.0  # slow safety rescan of new/, seconds
    max_queued: int = 1000  # detections waiting in the database before claiming slows down
    nats: NatsIntakeConfig | None = None  # [intake.nats]: detections pushed from the centre; None = off


@dataclass(frozen=True)
class SmtpConfig:
    host: str = "localhost"
    port: int = 25
    sender: str = "sdd@localhost"  # TOML key: "from"
    timeout: float = 30.0
    starttls: bool = False
    username: str = ""
    password_file: str = ""


@dataclass(frozen=True)
class RateLimit:
    count: int
    per_seconds: float


@dataclass(frozen=True)
class ActionsConfig:
    allowed_roots: tuple[Path, ...] = (Path("/home"), Path("/tmp"), Path("/var/tmp"), Path("/srv"), Path("/opt"))
    scripts_dir: Path = Path("/etc/sdd/scripts")
    yara_rules: Path = Path("/etc/sdd/yara")  # run_scan engine: yara (root's, as scripts_dir)
    scanner: tuple[str, ...] = ("clamdscan",)
    updater: tuple[str, ...] = ("freshclam",)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    # Executable paths (resolved), never names: a process's name is its own choice (docs/security.md).
    protected_processes: tuple[str, ...] = (
        "/usr/lib/systemd/systemd", "/usr/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-logind",
        "/usr/lib/systemd/systemd-udevd", "/usr/sbin/sshd", "/usr/bin/dbus-daemon", "/usr/bin/dbus-broker",
        "/usr/bin/dbus-broker-launch", "/usr/bin/login", "/usr/sbin/agetty", "/usr/sbin/cron", "/usr/sbin/clamd",
    )
    # Guards: destructive actions per window (a step over the limit waits for a slot), and circuit breakers
    # per integration. The limits follow reversibility: a quarantine can be undone, so a whole outbreak fits
    # (a runaway producer is still capped); a kill or a deletion cannot, so they stay tight.
    rate_limits: Mapping[str, RateLimit] = field(
        default_factory=lambda: {
            "kill_process": RateLimit(30, 60.0),
            "quarantine_file": RateLimit(10000, 60.0),
            "delete_file": RateLimit(60, 60.0),
        }
    )
    breaker_failures: int = 5
    breaker_reset: float = 60.0
    webhook_secret_file: str = ""  # HMAC key for call_webhook; or env SDD_WEBHOOK_SECRET
    # System mode started as root: the daemon runs as this user, a root executor does the primitives
    # (docs/security.md). "" keeps one root process (a host without the user; tests of other parts).
    daemon_user: str = "sdd"
    user_mode: bool = False


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    target: str = "auto"  # "auto" (the journal when started by systemd) | "journal" | "stderr"


@dataclass(frozen=True)
class NatsExportConfig:
    url: str = "nats://127.0.0.1:4222"
    stream: str = "SDD"
    subject: str = "sdd.events.{host}"  # {host}: the machine's hostname
    credentials: str = ""  # a NATS .creds file; "" = none


@dataclass(frozen=True)
class NatsIntakeConfig:
    url: str = "nats://127.0.0.1:4222"
    stream: str = "SDD_DETECTIONS"
    subject: str = "sdd.detections.{host}"
    durable: str = "sdd-{host}"
    credentials: str = ""


@dataclass(frozen=True)
class ExportConfig:
    ocsf_file: str = ""  # JSON lines of OCSF events; "" = off
    ocsf_file_max_bytes: int = 104857600  # rotate past this size
    ocsf_file_keep: int = 5  # rotated files kept (NAME.1 ... NAME.N)
    outbox_max_events: int = 200000  # undelivered events kept; past it new ones are dropped (and counted)
    nats: NatsExportConfig | None = None  # [export.nats]; None = off


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = ""  # "127.0.0.1:9788"; "" = off
    textfile: str = ""  # node_exporter textfile collector path (*.prom); "" = off
    textfile_interval: float = 15.0  # seconds between textfile writes


@dataclass(frozen=True)
class Config:
    paths: PathsConfig
    api: ApiConfig = field(default_factory=ApiConfig)
    dbus: DbusConfig = field(default_factory=DbusConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    intake: IntakeConfig = field(default_factory=IntakeConfig)
    actions: ActionsConfig = field(default_factory=ActionsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    user_mode: bool = False
    source: Path | None = None  # the file it was read from, None for built-in defaults

    @property
    def database(self) -> Path:
        return self.paths.state / "sdd.db"

    @property
    def vault(self) -> Path:
        return self.paths.state / "vault"

    @property
    def reports(self) -> Path:
        return self.paths.state / "reports"


def templates_dir() -> Path:
    """Where the shipped workflow templates are: $SDD_TEMPLATES, the Debian path, else the source tree."""
    env = os.environ.get("SDD_TEMPLATES")
    if env:
        return Path(env)
    if SYSTEM_TEMPLATES.is_dir():
        return SYSTEM_TEMPLATES
    return Path(__file__).resolve().parent.parent / "templates"


def _xdg(name: str, fallback: str) -> Path:
    value = os.environ.get(name)
    return Path(value) if value and os.path.isabs(value) else Path.home() / fallback


def default_paths(user: bool) -> PathsConfig:
    if not user:
        return PathsConfig(
            spool=Path("/var/spool/sdd"),
            state=Path("/var/lib/sdd"),
            socket=Path("/run/sdd/sdd.sock"),
            workflows=(SYSTEM_TEMPLATES, Path("/etc/sdd/workflows")),
        )
    state = _xdg("XDG_STATE_HOME", ".local/state") / "sdd"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    socket_dir = Path(runtime) / "sdd" if runtime else Path(f"/tmp/sdd-{os.getuid()}")
    return PathsConfig(
        spool=state / "spool",
        state=state,
        socket=socket_dir / "sdd.sock",
        workflows=(templates_dir(), _xdg("XDG_CONFIG_HOME", ".config") / "sdd" / "workflows"),
    )


def config_path(explicit: str | os.PathLike[str] | None, user: bool) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get("SDD_CONFIG")
    if env:
        return Path(env)
    if user:
        return _xdg("XDG_CONFIG_HOME", ".config") / "sdd" / "sdd.toml"
    return SYSTEM_CONFIG


def load_config(path: str | os.PathLike[str] | None = None, *, user: bool = False) -> Config:
    """Reads the config file (a missing file means defaults) and returns a validated Config."""
    file = config_path(path, user)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if path:  # an explicitly named file must exist
            raise ConfigError([f"{file}: no such file"]) from None
        raw = {}
        source = None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{file}: cannot read: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{file}: invalid TOML: {exc}"]) from None
    else:
        source = file
    return parse_config(raw, file=str(file), user=user, source=source)


def parse_config(raw: Mapping[str, Any], *, file: str = "<config>", user: bool = False,
                 source: Path | None = None) -> Config:
    errors: list[str] = []
    p = _Parser(file, errors)
    sections = p.table(raw, "", {"paths", "api", "dbus", "engine", "intake", "actions", "logging", "export",
                                 "metrics"})
    defaults = default_paths(user)

    paths_raw = p.table(sections.get("paths", {}), "paths", {"spool", "state", "socket", "workflows"})
    paths = PathsConfig(
        spool=p.path(paths_raw, "paths.spool", defaults.spool),
        state=p.path(paths_raw, "paths.state", defaults.state),
        socket=p.path(paths_raw, "paths.socket", defaults.socket),
        workflows=tuple(p.path_list(paths_raw, "paths.workflows", defaults.workflows)),
    )

    api_raw = p.table(sections.get("api", {}), "api", _field_names(ApiConfig))
    api = ApiConfig(
        socket_mode=p.mode(api_raw, "api.socket_mode", ApiConfig.socket_mode),
        socket_group=p.typed(api_raw, "api.socket_group", str, ApiConfig.socket_group),
        read_groups=tuple(p.str_list(api_raw, "api.read_groups", [])),
        max_connections=p.positive_int(api_raw, "api.max_connections", ApiConfig.max_connections),
        max_connections_per_uid=p.positive_int(api_raw, "api.max_connections_per_uid",
                                               ApiConfig.max_connections_per_uid),
        idle_timeout=p.positive_number(api_raw, "api.idle_timeout", ApiConfig.idle_timeout),
    )

    dbus_raw = p.table(sections.get("dbus", {}), "dbus", {"bus"})
    dbus = DbusConfig(bus=p.typed(dbus_raw, "dbus.bus", str, "session" if user else "system"))

    eng_raw = p.table(sections.get("engine", {}), "engine", _field_names(EngineConfig))
    engine = EngineConfig(
        max_concurrent_runs=p.positive_int(eng_raw, "engine.max_concurrent_runs", EngineConfig.max_concurrent_runs),
        history_retention_days=p.positive_int(
            eng_raw, "engine.history_retention_days", EngineConfig.history_retention_days),
        dedup_window=p.number(eng_raw, "engine.dedup_window", EngineConfig.dedup_window, minimum=0),
        shutdown_grace=p.number(eng_raw, "engine.shutdown_grace", EngineConfig.shutdown_grace, minimum=0),
        max_subworkflow_depth=p.positive_int(
            eng_raw, "engine.max_subworkflow_depth", EngineConfig.max_subworkflow_depth),
    )

    in_raw = p.table(sections.get("intake", {}), "intake", _field_names(IntakeConfig))
    intake = IntakeConfig(
        max_file_size=p.positive_int(in_raw, "intake.max_file_size", IntakeConfig.max_file_size),
        rescan_interval=p.positive_number(in_raw, "intake.rescan_interval", IntakeConfig.rescan_interval),
        max_queued=p.positive_int(in_raw, "intake.max_queued", IntakeConfig.max_queued),
        nats=_nats_intake(p, in_raw),
    )

    act_keys = _field_names(ActionsConfig) - {"user_mode"}
    act_raw = p.table(sections.get("actions", {}), "actions", act_keys)
    dflt = ActionsConfig()
    smtp_raw = p.table(act_raw.get("smtp", {}), "actions.smtp",
                       {"host", "port", "from", "timeout", "starttls", "username", "password_file"})
    smtp = SmtpConfig(
        host=p.typed(smtp_raw, "actions.smtp.host", str, SmtpConfig.host),
        port=p.positive_int(smtp_raw, "actions.smtp.port", SmtpConfig.port),
        sender=p.typed(smtp_raw, "actions.smtp.from", str, SmtpConfig.sender),
        timeout=p.positive_number(smtp_raw, "actions.smtp.timeout", SmtpConfig.timeout),
        starttls=p.typed(smtp_raw, "actions.smtp.starttls", bool, False),
        username=p.typed(smtp_raw, "actions.smtp.username", str, ""),
        password_file=p.typed(smtp_raw, "actions.smtp.password_file", str, ""),
    )
    rate_limits = dict(dflt.rate_limits)
    rl_raw = p.table(act_raw.get("rate_limits", {}), "actions.rate_limits", None)
    for name, value in rl_raw.items():
        key = f"actions.rate_limits.{name}"
        if (isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)
                and value[0] >= 0 and value[1] > 0):
            rate_limits[name] = RateLimit(int(value[0]), float(value[1]))
        else:
            errors.append(f"{file}: {key}: expected [count, per_seconds], got {value!r}")
    actions = ActionsConfig(
        allowed_roots=tuple(p.path_list(act_raw, "actions.allowed_roots", dflt.allowed_roots)),
        scripts_dir=p.path(act_raw, "actions.scripts_dir", dflt.scripts_dir),
        yara_rules=p.path(act_raw, "actions.yara_rules", dflt.yara_rules),
        scanner=tuple(p.argv(act_raw, "actions.scanner", dflt.scanner)),
        updater=tuple(p.argv(act_raw, "actions.updater", dflt.updater)),
        smtp=smtp,
        protected_processes=tuple(str(x) for x in p.path_list(act_raw, "actions.protected_processes",
                                                               dflt.protected_processes)),
        rate_limits=rate_limits,
        breaker_failures=p.positive_int(act_raw, "actions.breaker_failures", dflt.breaker_failures),
        breaker_reset=p.positive_number(act_raw, "actions.breaker_reset", dflt.breaker_reset),
        webhook_secret_file=p.typed(act_raw, "actions.webhook_secret_file", str, ""),
        daemon_user=p.typed(act_raw, "actions.daemon_user", str, dflt.daemon_user),
        user_mode=user,
    )

    log_raw = p.table(sections.get("logging", {}), "logging", {"level", "target"})
    level = p.typed(log_raw, "logging.level", str, "info")
    if level not in ("debug", "info", "warning", "error"):
        errors.append(f"{file}: logging.level: expected one of debug, info, warning, error, got {level!r}")
    target = p.choice(log_raw, "logging.target", ("auto", "journal", "stderr"), "auto")
    export, metrics = _fleet(p, sections)

    if errors:
        raise ConfigError(errors)
    return Config(paths=paths, api=api, dbus=dbus, engine=engine, intake=intake, actions=actions,
                  logging=LoggingConfig(level=level, target=target), export=export, metrics=metrics,
                  user_mode=user, source=source)


# --- fleet: [export], [export.nats], [intake.nats], [metrics] ---------------------------------------------------
def _fleet(p: _Parser, sections: Mapping[str, Any]) -> tuple[ExportConfig, MetricsConfig]:
    ex_raw = p.table(sections.get("export", {}), "export", _field_names(ExportConfig))
    d = ExportConfig()
    ocsf_file = p.typed(ex_raw, "export.ocsf_file", str, "")
    if ocsf_file and not os.path.isabs(ocsf_file):
        p.err("export.ocsf_file", f"must be an absolute path or \"\", got {ocsf_file!r}")
        ocsf_file = ""
    nats = None
    if "nats" in ex_raw:
        n_raw = p.table(ex_raw["nats"], "export.nats", _field_names(NatsExportConfig))
        n = NatsExportConfig()
        nats = NatsExportConfig(url=p.nats_url(n_raw, "export.nats.url", n.url),
                                stream=p.nats_name(n_raw, "export.nats.stream", n.stream),
                                subject=p.nats_subject(n_raw, "export.nats.subject", n.subject),
                                credentials=p.optional_path(n_raw, "export.nats.credentials"))
    export = ExportConfig(
        ocsf_file=os.path.normpath(ocsf_file) if ocsf_file else "",
        ocsf_file_max_bytes=p.positive_int(ex_raw, "export.ocsf_file_max_bytes", d.ocsf_file_max_bytes),
        ocsf_file_keep=p.positive_int(ex_raw, "export.ocsf_file_keep", d.ocsf_file_keep),
        outbox_max_events=p.positive_int(ex_raw, "export.outbox_max_events", d.outbox_max_events),
        nats=nats)
    m_raw = p.table(sections.get("metrics", {}), "metrics", _field_names(MetricsConfig))
    listen = p.typed(m_raw, "metrics.listen", str, "")
    if listen and _host_port(listen) is None:
        p.err("metrics.listen", f"expected \"HOST:PORT\" (such as \"127.0.0.1:9788\") or \"\", got {listen!r}")
        listen = ""
    textfile = p.typed(m_raw, "metrics.textfile", str, "")
    if textfile and (not os.path.isabs(textfile) or not textfile.endswith(".prom")):
        p.err("metrics.textfile", f"must be an absolute path ending in .prom (node_exporter reads only those), "
                                  f"got {textfile!r}")
        textfile = ""
    metrics = MetricsConfig(listen=listen, textfile=os.path.normpath(textfile) if textfile else "",
                            textfile_interval=p.positive_number(m_raw, "metrics.textfile_interval",
                                                                MetricsConfig.textfile_interval))
    return export, metrics


def _nats_intake(p: _Parser, in_raw: Mapping[str, Any]) -> NatsIntakeConfig | None:
    if "nats" not in in_raw:
        return None
    raw = p.table(in_raw["nats"], "intake.nats", _field_names(NatsIntakeConfig))
    d = NatsIntakeConfig()
    return NatsIntakeConfig(url=p.nats_url(raw, "intake.nats.url", d.url),
                            stream=p.nats_name(raw, "intake.nats.stream", d.stream),
                            subject=p.nats_subject(raw, "intake.nats.subject", d.subject),
                            durable=p.nats_name(raw, "intake.nats.durable", d.durable),
                            credentials=p.optional_path(raw, "intake.nats.credentials"))


def _host_port(text: str) -> tuple[str, int] | None:
    """"HOST:PORT" or "[V6]:PORT" → (host, port); None when malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return (host, int(port)) if host and not any(c.isspace() for c in host) else None


def listen_address(text: str) -> tuple[str, int]:
    """`[metrics] listen` as (host, port); the config checked it already."""
    parsed = _host_port(text)
    if parsed is None:
        raise ValueError(f"not HOST:PORT: {text!r}")
    return parsed


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _is_number(value: object) -> bool:
    # TOML has inf and nan literals; no setting means them.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class _Parser:
    """Collects errors instead of stopping at the first, so check-config can list them all."""

    def __init__(self, file: str, errors: list[str]) -> None:
        self.file = file
        self.errors = errors

    def err(self, key: str, message: str) -> None:
        self.errors.append(f"{self.file}: {key}: {message}")

    def table(self, raw: object, key: str, allowed: set[str] | None) -> dict[str, Any]:
        if not isinstance(raw, dict):
            self.err(key or "<top>", f"expected a table, got {type(raw).__name__}")
            return {}
        if allowed is not None:
            for name in raw:
                if name not in allowed:
                    where = f"{key}.{name}" if key else name
                    hint = _suggest(name, allowed)
                    self.err(where, "unknown key" + (f" (did you mean {hint!r}?)" if hint else ""))
        return raw

    def typed(self, raw: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
        name = key.rsplit(".", 1)[-1]
        if name not in raw:
            return default
        value = raw[name]
        if kind is not bool and isinstance(value, bool) or not isinstance(value, kind):
            self.err(key, f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
            return default
        return value

    def number(self, raw: Mapping[str, Any], key: str, default: float, minimum: float) -> float:
        name = key.rsplit(".", 1)[-1]
        if name not in raw:
            return default
        value = raw[name]
        if not _is_number(value) or not math.isfinite(value) or value < minimum:
            self.err(key, f"expected a finite number >= {minimum}, got {value!r}")
            return default
        return float(value)

    def positive_number(self, raw: Mapping[str, Any], key: str, default: float) -> float:
        value = self.number(raw, key, default, 0)
        if value == 0 and key.rsplit(".", 1)[-1] in raw:
            self.err(key, "must be greater than 0")
        return value

    def positive_int(self, raw: Mapping[str, Any], key: str, default: int) -> int:
        value = self.typed(raw, key, int, default)
        if value < 1:
            self.err(key, f"must be at least 1, got {value}")
            return default
        return value

    def path(self, raw: Mapping[str, Any], key: str, default: Path) -> Path:
        value = self.typed(raw, key, str, None)
        if value is None:
            return default
        if not os.path.isabs(value):
            self.err(key, f"must be an absolute path, got {value!r}")
            return default
        return Path(os.path.normpath(value))

    def str_list(self, raw: Mapping[str, Any], key: str, default: Any) -> list[str]:
        value = self.typed(raw, key, list, None)
        if value is None:
            return list(default)
        if not all(isinstance(v, str) for v in value):
            self.err(key, f"expected a list of strings, got {value!r}")
            return list(default)
        return value

    def path_list(self, raw: Mapping[str, Any], key: str, default: Any) -> list[Path]:
        values = self.str_list(raw, key, [str(d) for d in default])
        bad = [v for v in values if not os.path.isabs(v)]
        if bad:
            self.err(key, f"every path must be absolute, got {bad!r}")
            return list(default)
        return [Path(os.path.normpath(v)) for v in values]

    def argv(self, raw: Mapping[str, Any], key: str, default: tuple[str, ...]) -> list[str]:
        name = key.rsplit(".", 1)[-1]
        if name not in raw:
            return list(default)
        value = raw[name]
        if isinstance(value, str) and value.strip():
            return [value]  # a program name, never split by a shell
        if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
            return value
        self.err(key, f"expected a program name or a non-empty argv list, got {value!r}")
        return list(default)

    def choice(self, raw: Mapping[str, Any], key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.typed(raw, key, str, default)
        if value not in choices:
            self.err(key, f"expected one of {', '.join(choices)}, got {value!r}")
            return default
        return value

    def optional_path(self, raw: Mapping[str, Any], key: str) -> str:
        value = self.typed(raw, key, str, "")
        if value and not os.path.isabs(value):
            self.err(key, f"must be an absolute path or \"\", got {value!r}")
            return ""
        return value

    def nats_url(self, raw: Mapping[str, Any], key: str, default: str) -> str:
        value = self.typed(raw, key, str, default)
        scheme, sep, rest = value.partition("://")
        if not sep or scheme not in ("nats", "tls") or not rest or any(c.isspace() for c in value):
            self.err(key, f"expected a URL such as \"nats://127.0.0.1:4222\", got {value!r}")
            return default
        return value

    def nats_name(self, raw: Mapping[str, Any], key: str, default: str) -> str:
        # Stream and consumer names: no dots, wildcards, spaces or path separators (the server refuses them).
        value = self.typed(raw, key, str, default)
        bare = value.replace("{host}", "h")
        if not bare or len(value) > 200 or not all(c.isalnum() or c in "-_" for c in bare):
            self.err(key, f"expected a name of letters, digits, '-' and '_' (may contain {{host}}), got {value!r}")
            return default
        return value

    def nats_subject(self, raw: Mapping[str, Any], key: str, default: str) -> str:
        value = self.typed(raw, key, str, default)
        tokens = value.replace("{host}", "h").split(".")
        if len(value) > 256 or not all(t and t not in ("*", ">") and all(c.isprintable() and not c.isspace()
                                                                           and c not in "*>" for c in t)
                                       for t in tokens):
            self.err(key, f"expected a subject without wildcards such as \"sdd.events.{{host}}\", got {value!r}")
            return default
        return value

    def mode(self, raw: Mapping[str, Any], key: str, default: str) -> str:
        value = self.typed(raw, key, str, default)
        try:
            number = int(value, 8)
        except ValueError:
            number = -1
        # Bits for others are allowed: the socket's authorisation table, not its mode, decides what a caller
        # may do ("0666" lets `read_groups` members in; everyone else still only gets `ping`).
        if not 0 <= number <= 0o777:
            self.err(key, f"expected an octal permission mode such as \"0660\" or \"0666\", got {value!r}")
            return default
        return value


def _suggest(name: str, allowed: set[str]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(name, sorted(allowed), n=1, cutoff=0.6)
    return matches[0] if matches else None
