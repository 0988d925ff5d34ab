"""
The configuration file of C{twistd qha --config FILE}.

The file is TOML (read with the standard library's C{tomllib}), one key per
option of C{twistd qha}, named as the long option without its dashes
(C{port = "tcp:5672"}, C{ha-brokers = "a:5673,b:5673"}); a flag is a boolean
(C{store-recover = true}). Options given on the command line win over the
file. A key that is no option, or a value of the wrong type, stops the start
with one line naming the key and the file.

The type of a key is the type of its option's default: a whole number
(C{heartbeat = 30}), a number (C{ha-backup-timeout = 2.5}, a whole number is
fine too) or a string; a C{yes}/C{no} option also takes C{true}/C{false}.

Secrets need not be written into the file. For any option whose value is
text, C{KEY-file = "/path"} takes the value from the first line of that
file (its line end removed), and C{KEY-env = "NAME"} from the environment
variable C{NAME} (a variable that is not set stops the start). Only one of
C{KEY}, C{KEY-file} and C{KEY-env} may be given. (An option whose own name
ends in C{-file}, such as C{ha-password-file}, is that option: it names a
file the broker reads itself.) Nothing else in the file is expanded:
C{"${HOME}"} is the string C{${HOME}}.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

FILE_SUFFIX = "-file"
"""
C{KEY-file = "/path"}: the value of C{KEY} is the first line of that file.
"""

ENV_SUFFIX = "-env"
"""
C{KEY-env = "NAME"}: the value of C{KEY} is the environment variable C{NAME}.
"""

NOT_IN_FILE = ("config",)
"""
Options that make no sense in the file itself.
"""


class ConfigError(ValueError):
    """
    The configuration file cannot be used; the message names the file and
    the key.
    """


@dataclass(frozen=True)
class OptionSpec:
    """
    One option of C{twistd qha}, as the file sees it.

    @ivar name: the long option, which is the key.
    @ivar kind: the type of value the key takes: C{bool} (a flag), C{int},
        C{float} or C{str}.
    @ivar default: the option's default.
    @ivar doc: the option's help text.
    @ivar coerce: what the command line passes the option's text through,
        if anything (range checks live there).
    """

    name: str
    kind: type
    default: Any
    doc: str
    coerce: Callable[[str], Any] | None = None

    @property
    def yesNo(self) -> bool:
        """
        Whether the option takes C{yes} or C{no} (and so C{true}/C{false}).
        """
        return self.kind is str and self.default in ("yes", "no")

    def typeName(self) -> str:
        """
        The TOML type the key takes, in words.
        """
        if self.kind is bool:
            return "boolean"
        if self.kind is int:
            return "integer"
        if self.kind is float:
            return "number"
        if self.yesNo:
            return '"yes"/"no" or boolean'
        return "string"


def optionSpecs(options: type) -> dict[str, OptionSpec]:
    """
    The keys of the file: every C{optParameters} and C{optFlags} entry of the
    L{twisted.python.usage.Options} class C{options}, but C{--config}.
    """
    specs: dict[str, OptionSpec] = {}
    for entry in getattr(options, "optParameters", []):
        name, _, default, doc = entry[:4]
        coerce = entry[4] if len(entry) > 4 else None
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            kind: type = str
        else:
            kind = type(default)
        if name not in NOT_IN_FILE:
            specs[name] = OptionSpec(name, kind, default, doc, coerce)
    for entry in getattr(options, "optFlags", []):
        name, _, doc = entry[:3]
        specs[name] = OptionSpec(name, bool, False, doc)
    return specs


def _readSecretFile(path: str, key: str, where: str) -> str:
    """
    The first line of C{path}, for C{KEY-file}.

    @raise ConfigError: if it cannot be read.
    """
    try:
        with open(path, encoding="utf-8") as file:
            return file.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{where}: {key}: cannot read {path}: {error}") from None


def _checkType(spec: OptionSpec, key: str, value: Any, where: str) -> Any:
    """
    C{value} if it has the type of C{spec}'s option (C{yes}/C{no} for a
    boolean given to a yes/no option, a float for a whole number given to a
    number).

    @raise ConfigError: naming the key, the type it takes and the file.
    """
    kind = spec.kind
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, str):
        return value
    if spec.yesNo and isinstance(value, bool):
        return "yes" if value else "no"
    got = type(value).__name__
    if isinstance(value, dict):
        got = "table"
    elif isinstance(value, list):
        got = "array"
    article = "an" if spec.typeName()[0] in "aeiou" else "a"
    raise ConfigError(f"{where}: {key} must be {article} {spec.typeName()}, not a {got} ({value!r})")


def readConfig(
    path: str, specs: Mapping[str, OptionSpec], environ: Mapping[str, str]
) -> dict[str, Any]:
    """
    The options of the file at C{path}: option name to value, checked
    against C{specs}, with C{KEY-file} and C{KEY-env} read.

    @param environ: where C{KEY-env} looks.
    @raise ConfigError: if the file cannot be read or parsed, or a key is
        unknown, given twice or of the wrong type.
    """
    where = f"config file {path}"
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"cannot read the config file {path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{where} is not valid TOML: {error}") from None
    values: dict[str, Any] = {}
    givenAs: dict[str, str] = {}
    for key, raw in data.items():
        if key in specs:
            name, value = key, raw
        elif key.endswith(FILE_SUFFIX) and key[: -len(FILE_SUFFIX)] in specs:
            name = key[: -len(FILE_SUFFIX)]
            _indirectOnly(specs[name], key, raw, where)
            value = _readSecretFile(raw, key, where)
        elif key.endswith(ENV_SUFFIX) and key[: -len(ENV_SUFFIX)] in specs:
            name = key[: -len(ENV_SUFFIX)]
            _indirectOnly(specs[name], key, raw, where)
            if raw not in environ:
                raise ConfigError(f"{where}: {key}: the environment variable {raw} is not set")
            value = environ[raw]
        else:
            raise ConfigError(f"{where}: unknown key {key!r}{_suggestion(key, specs)}")
        if name in givenAs:
            raise ConfigError(f"{where}: {givenAs[name]} and {key} both give {name}: keep one")
        givenAs[name] = key
        values[name] = _checkType(specs[name], key, value, where)
    return values


def _indirectOnly(spec: OptionSpec, key: str, raw: Any, where: str) -> None:
    """
    Check a C{KEY-file} or C{KEY-env}: its option takes text, and it is a
    string.

    @raise ConfigError: if not.
    """
    if spec.kind is not str:
        raise ConfigError(f"{where}: {key}: only options whose value is text come from a file or the environment")
    if not isinstance(raw, str):
        raise ConfigError(f"{where}: {key} must be a string, not {raw!r}")


def _suggestion(key: str, specs: Iterable[str]) -> str:
    """
    C{" (did you mean 'x'?)"} for a key close to an option, else nothing.
    """
    close = difflib.get_close_matches(key, list(specs), n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return " (see doc/configuration.md)"


def findConfigPath(
    arguments: Sequence[str], shortOptions: str, longOptions: Sequence[str]
) -> str | None:
    """
    The value of C{--config} in C{arguments}, found as the command line's
    parser will find it (abbreviations and C{--config=FILE} included), or
    C{None}. Arguments the parser refuses are left for it to report.
    """
    import getopt

    try:
        options, _ = getopt.getopt(list(arguments), shortOptions, list(longOptions))
    except getopt.GetoptError:
        return None
    path = None
    for option, value in options:
        if option == "--config":
            path = value
    return path


def markdownTable(specs: Mapping[str, OptionSpec]) -> str:
    """
    The table of keys for C{doc/configuration.md}: key, type, default,
    meaning (C{qha.test.test_config} prints the rows missing from the doc).
    """
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for spec in specs.values():
        default = "" if spec.default is None else f"`{spec.default!r}`".replace("'", '"')
        if spec.kind is bool:
            default = "`false`"
        doc = " ".join(spec.doc.split()).replace("|", "\\|")
        lines.append(f"| `{spec.name}` | {spec.typeName()} | {default} | {doc} |")
    return "\n".join(lines) + "\n"


__all__ = [
    "ConfigError",
    "OptionSpec",
    "findConfigPath",
    "markdownTable",
    "optionSpecs",
    "readConfig",
]
