"""Configuration tree: a ``dict`` with attribute access, YAML files with ``_BASE_``, checked merges.

The behaviour follows detectron2's yacs-based ``CfgNode`` closely enough that the official
CenterMask2 YAML files load unchanged and give the same values:

* ``_BASE_: "other.yaml"`` is resolved relative to the file that names it; the base is
  loaded first and the including file is merged over it recursively.  Files are read
  with ``yaml.safe_load`` only.
* Every key must exist in the defaults (``centermask2.config.defaults``); an unknown key
  fails with a close-match suggestion.  Only the ``SOLVER`` section, which inference
  never reads, accepts keys the defaults do not know.
* Every value is checked against the type of its default.  Strings are parsed with
  ``ast.literal_eval`` when the default is not a string, so ``"(False, True)"`` becomes a
  tuple of bools, as in yacs.  ``int`` is accepted where a ``float`` is expected, and
  lists and tuples are interchangeable (the result takes the default's container type).
"""

from __future__ import annotations

import ast
import difflib
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import yaml

from ..errors import ConfigError, InputError, MissingFileError
from ..fileio import MAX_NESTING, open_input_file
from .defaults import default_config_dict

__all__ = [
    "BASE_KEY",
    "CfgNode",
    "ConfigError",
    "UnknownConfigKeyError",
    "get_cfg",
    "load_config",
    "load_yaml_with_base",
    "parse_yaml_text",
    "MAX_CONFIG_BYTES",
]

logger = logging.getLogger(__name__)

#: Key naming the file(s) a YAML config inherits from.
BASE_KEY = "_BASE_"

# Top-level sections only training reads; unknown keys in them are kept, not rejected.
_LOOSE_SECTIONS = frozenset({"SOLVER"})

_SUPPORTED_VERSION = 2
#: the largest config file read (the official ones have a few kilobytes, a resolved config ~15 KB)
MAX_CONFIG_BYTES = 1 << 20
#: the most files one config may read through its _BASE_ chain (the official ones read 2 or 3)
_MAX_CONFIG_FILES = 64
_OVERRIDES_SOURCE = "command-line overrides"
_MAX_LISTED_KEYS = 12


class UnknownConfigKeyError(ConfigError, KeyError):
    """A configuration key does not exist in the defaults.

    Subclasses both ``ValueError`` (via :class:`ConfigError`) and ``KeyError`` (what yacs
    raises), so either ``except`` clause catches it.
    """

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message and wrap it in quotes.
        return str(self.args[0]) if self.args else ""


class CfgNode(dict):
    """A configuration node: a ``dict`` whose keys are also attributes.

    Sections are nested ``CfgNode`` objects, so ``cfg.MODEL.FCOS.NUM_CLASSES`` and
    ``cfg["MODEL"]["FCOS"]["NUM_CLASSES"]`` are the same value.  After :meth:`freeze`
    every attempt to change the node or its sections raises ``AttributeError``.

    Args:
        init: Optional mapping to copy from; nested mappings become ``CfgNode`` sections.
    """

    def __init__(self, init: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        object.__setattr__(self, "_frozen", False)
        for key, value in (init or {}).items():
            self[key] = value

    # ---- attribute access -------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            hint = _did_you_mean(name, list(self.keys()))
            raise AttributeError(f"Config has no key {name!r}.{hint}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(f"Config has no key {name!r}.") from None

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | {k for k in self.keys() if isinstance(k, str)})

    # ---- guarded mutation -------------------------------------------------------------
    def _check_mutable(self, key: object) -> None:
        if self._frozen:
            raise AttributeError(
                f"Cannot change config key {key!r}: the config is frozen. "
                "Use cfg.clone() then cfg.defrost() to get an editable copy."
            )

    def __setitem__(self, key: str, value: Any) -> None:
        self._check_mutable(key)
        if isinstance(value, Mapping) and not isinstance(value, CfgNode):
            value = CfgNode(value)
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self._check_mutable(key)
        super().__delitem__(key)

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Set several keys, like ``dict.update`` (refused when frozen)."""
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        """Like ``dict.setdefault`` (refused when frozen and ``key`` is missing)."""
        if key not in self:
            self[key] = default
        return self[key]

    def pop(self, key: str, *default: Any) -> Any:  # type: ignore[override]
        """Like ``dict.pop`` (refused when frozen)."""
        self._check_mutable(key)
        return super().pop(key, *default)

    def popitem(self) -> tuple[str, Any]:
        """Like ``dict.popitem`` (refused when frozen)."""
        self._check_mutable("<any>")
        return super().popitem()

    def clear(self) -> None:
        """Like ``dict.clear`` (refused when frozen)."""
        self._check_mutable("<all>")
        super().clear()

    # ---- freezing, copying, pickling --------------------------------------------------
    def freeze(self) -> None:
        """Make this node and all its sections immutable."""
        self._set_frozen(True)

    def defrost(self) -> None:
        """Make this node and all its sections mutable again."""
        self._set_frozen(False)

    def is_frozen(self) -> bool:
        """Return whether the node is frozen."""
        return bool(self._frozen)

    def _set_frozen(self, frozen: bool) -> None:
        object.__setattr__(self, "_frozen", frozen)
        for value in self.values():
            if isinstance(value, CfgNode):
                value._set_frozen(frozen)

    def clone(self) -> CfgNode:
        """Return a deep copy; it is frozen if and only if this node is (as in yacs)."""
        copy_ = CfgNode(_plain_copy(self))
        if self.is_frozen():
            copy_.freeze()
        return copy_

    def __reduce__(self) -> tuple[Callable[..., CfgNode], tuple[dict[str, Any], bool]]:
        return _rebuild_node, (self.to_dict(), self.is_frozen())

    # ---- conversion -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Return the tree as nested plain ``dict`` objects (values deep-copied)."""
        return _plain_copy(self)

    def dump(self, **kwargs: Any) -> str:
        """Serialize to YAML text that :meth:`merge_from_file` can load again.

        Tuples are written as YAML lists; merging converts them back to tuples where the
        default is a tuple.

        Args:
            **kwargs: Passed on to ``yaml.safe_dump`` (e.g. ``sort_keys=True``).
        """
        options: dict[str, Any] = {"sort_keys": False, "Dumper": _ConfigDumper}
        options.update(kwargs)
        return yaml.dump(_yaml_ready(self), **options)

    def __str__(self) -> str:
        return self.dump()

    def __repr__(self) -> str:
        return f"CfgNode({dict.__repr__(self)})"

    # ---- merging ----------------------------------------------------------------------
    def merge_from_file(self, config_file: str | os.PathLike[str]) -> None:
        """Merge a YAML file (and its ``_BASE_`` chain) into this config.

        Either every value is merged or, on error, nothing changes.

        Args:
            config_file: Path to a ``.yaml`` file.

        Raises:
            FileNotFoundError: The file, or a ``_BASE_`` file it names, does not exist.
            UnknownConfigKeyError: A key does not exist in the defaults.
            ConfigError: Bad YAML, a value of the wrong type, or a ``_BASE_`` cycle.
            AttributeError: The config is frozen.
        """
        self._check_mutable(os.fspath(config_file))
        data, origins = _load_yaml_tree(os.fspath(config_file), (), budget=[_MAX_CONFIG_FILES])
        self._merge_staged([(data, lambda key: origins.get(key, os.fspath(config_file)))])

    def merge_from_dict(self, data: Mapping[str, Any], source: str = "<dict>") -> None:
        """Merge a nested mapping (same layout as a YAML file, without ``_BASE_``).

        Args:
            data: Nested mapping of keys to new values.
            source: Where the values come from, for error messages.
        """
        self._check_mutable(source)
        self._merge_staged([(data, lambda key: source)])

    def merge_from_list(self, opts: Sequence[Any]) -> None:
        """Merge ``["KEY", VALUE, "KEY", VALUE, ...]`` overrides, e.g. from the command line.

        Keys are dotted paths (``"MODEL.FCOS.NMS_TH"``).  String values are parsed with
        ``ast.literal_eval`` when the default is not a string, so ``"0.5"`` becomes ``0.5``
        and ``"(800,)"`` a tuple; every value is type-checked against its default.

        Args:
            opts: Flat sequence of alternating keys and values.

        Raises:
            ConfigError: Odd number of items, a non-string key or a value of the wrong type.
            UnknownConfigKeyError: A key does not exist in the defaults.
        """
        if isinstance(opts, (str, bytes)):
            raise ConfigError(
                f"Config overrides must be a list of KEY VALUE items, got the single string {opts!r}; "
                'split it, e.g. ["MODEL.WEIGHTS", "model.pth"].'
            )
        items = list(opts)
        if len(items) % 2 != 0:
            raise ConfigError(
                f"Config overrides must be KEY VALUE pairs, got {len(items)} items; "
                f"key {items[-1]!r} has no value. Example: MODEL.WEIGHTS model.pth MODEL.DEVICE cpu"
            )
        self._check_mutable(_OVERRIDES_SOURCE)
        updates = []
        for key, value in zip(items[0::2], items[1::2]):
            if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
                raise ConfigError(
                    f"Config override key {key!r} is not a dotted key such as 'MODEL.FCOS.NMS_TH'."
                )
            nested: Any = value
            for part in reversed(key.split(".")):
                nested = {part: nested}
            updates.append((nested, lambda _key: _OVERRIDES_SOURCE))
        self._merge_staged(updates)

    def _merge_staged(self, updates: list[tuple[Mapping[str, Any], Callable[[str], str]]]) -> None:
        # Validate on a copy first, so a bad value leaves this node untouched; then apply the
        # same (now known-good) merge in place, keeping references to sections valid.
        staged = self.clone()
        for data, origin in updates:
            _merge_mapping(staged, data, prefix="", root=staged, origin=origin, loose=False)
        for data, origin in updates:
            _merge_mapping(self, data, prefix="", root=self, origin=origin, loose=False)


def _rebuild_node(data: dict[str, Any], frozen: bool) -> CfgNode:
    node = CfgNode(data)
    if frozen:
        node.freeze()
    return node


def _plain_copy(value: Any) -> Any:
    """Deep-copy ``value`` turning every mapping into a plain ``dict``."""
    if isinstance(value, Mapping):
        return {k: _plain_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_copy(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain_copy(v) for v in value)
    return value


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.safe_load`` without aliases (``*name``): a few hundred bytes of nested aliases expand
    to gigabytes ("billion laughs"), and detectron2/centermask2 configs never use them. Nesting is
    bounded too (:data:`~centermask2.fileio.MAX_NESTING`): PyYAML composes recursively, so deeper
    nesting would end in a ``RecursionError``."""

    _depth = 0

    def compose_node(self, parent, index):  # noqa: ANN001, ANN201 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, f"YAML aliases (*{event.anchor}) are not supported in configs; write the values out",
                event.start_mark,
            )
        if self._depth >= MAX_NESTING:
            raise yaml.constructor.ConstructorError(
                None, None, f"its sequences / mappings are nested more than {MAX_NESTING} levels deep",
                self.peek_event().start_mark,
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def parse_yaml_text(text: str, source: str) -> Any:
    """Parse YAML text from an untrusted ``source`` (e.g. the config an exported model carries) the
    way config files are read: safe types only, no aliases, bounded nesting.

    Raises:
        ConfigError: not YAML, or YAML this reader refuses; the message names ``source``.
    """
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source} is larger than a config can be ({len(text):,} characters, at most "
                          f"{MAX_CONFIG_BYTES:,})")
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"Cannot parse {source} as YAML: {e}") from e
    except RecursionError:  # a scanner or constructor path the nesting bound does not cover
        raise ConfigError(f"Cannot parse {source} as YAML: nested too deeply") from None


class _ConfigDumper(yaml.SafeDumper):
    """Safe YAML dumper writing sections as blocks and lists of scalars on one line."""

    def represent_list(self, data: list[Any]) -> yaml.SequenceNode:
        flow = all(not isinstance(item, (list, dict)) for item in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_ConfigDumper.add_representer(list, _ConfigDumper.represent_list)


def _yaml_ready(value: Any) -> Any:
    """Plain dicts and lists only, which ``yaml.safe_dump`` writes as standard YAML."""
    if isinstance(value, Mapping):
        return {k: _yaml_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_yaml_ready(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------
# Reading YAML files with _BASE_
# ---------------------------------------------------------------------------------------
def load_yaml_with_base(config_file: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML config and its ``_BASE_`` chain into one nested dict (no validation).

    ``_BASE_`` (a path, or a list of paths) is resolved relative to the directory of the
    file that names it (``~`` is expanded); bases are merged first, in order, then the
    file itself, recursively key by key.

    Args:
        config_file: Path to a ``.yaml`` file.

    Returns:
        The merged mapping, without any ``_BASE_`` key.

    Raises:
        FileNotFoundError: The file or one of its bases does not exist.
        ConfigError: Bad YAML, a non-mapping document, or a ``_BASE_`` cycle.
    """
    data, _ = _load_yaml_tree(os.fspath(config_file), (), budget=[_MAX_CONFIG_FILES])
    return data


def _read_yaml_file(path: str, included_by: str | None) -> dict[str, Any]:
    if not os.path.exists(path):
        if included_by is None:
            raise MissingFileError(f"Config file not found: '{path}'.")
        raise MissingFileError(
            f"Base config file not found: '{path}' (named by {BASE_KEY} in '{included_by}'; "
            f"{BASE_KEY} paths are relative to the file that names them)."
        )
    if os.path.isdir(path):
        raise ConfigError(f"Config path '{path}' is a directory; pass a .yaml file.")
    try:
        with open_input_file(path, "config file", max_bytes=MAX_CONFIG_BYTES) as f:
            raw = f.read()
    except InputError as e:
        raise ConfigError(str(e) + ("" if included_by is None else f" (named by {BASE_KEY} in '{included_by}')")) from None
    except OSError as e:
        raise ConfigError(f"cannot read config file '{path}': {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"Config file '{path}' is not UTF-8 text ({e}); pass a .yaml file.") from e
    data = parse_yaml_text(text, f"config file '{path}'")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"Config file '{path}' must contain a mapping of keys (e.g. 'MODEL: ...'), "
            f"got a {type(data).__name__}."
        )
    return data


def _resolve_base(ref: Any, including_file: str) -> str:
    if not isinstance(ref, str) or not ref:
        raise ConfigError(
            f"{BASE_KEY} in '{including_file}' must be a file path (or a list of paths), got {ref!r}."
        )
    if "://" in ref:
        raise ConfigError(
            f"{BASE_KEY} {ref!r} in '{including_file}' is a URL; only local files are supported. "
            "Download it and name the local path."
        )
    ref = os.path.expanduser(ref)
    if os.path.isabs(ref):
        return ref
    return os.path.join(os.path.dirname(including_file), ref)


def _load_yaml_tree(
    path: str, chain: tuple[str, ...], included_by: str | None = None, *, budget: list[int]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Load ``path`` with its bases; also return which file set each dotted key. ``budget``: how many
    more files may be read (shared by the whole chain: a few files naming each other's bases many
    times would otherwise read millions)."""
    real = os.path.realpath(path)
    if real in chain:
        raise ConfigError(f"{BASE_KEY} cycle: '{path}' includes itself (via '{included_by}').")
    budget[0] -= 1
    if budget[0] < 0:
        raise ConfigError(f"{BASE_KEY} chain of '{chain[0] if chain else path}' reads more than {_MAX_CONFIG_FILES} "
                          "files; a config needs a few")
    data = _read_yaml_file(path, included_by)
    base_refs = data.pop(BASE_KEY, None)
    own_origins = {key: path for key in _dotted_keys(data)}
    if base_refs is None:
        return data, own_origins
    if isinstance(base_refs, str) or not isinstance(base_refs, list):
        base_refs = [base_refs]

    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for ref in base_refs:
        base_path = _resolve_base(ref, path)
        base_data, base_origins = _load_yaml_tree(base_path, chain + (real,), included_by=path, budget=budget)
        _merge_raw(merged, base_data)
        origins.update(base_origins)
    _merge_raw(merged, data)
    origins.update(own_origins)
    return merged, origins


def _merge_raw(dst: dict[str, Any], src: Mapping[str, Any]) -> None:
    """Recursively merge ``src`` into ``dst``; ``src`` wins on leaves."""
    for key, value in src.items():
        if isinstance(value, Mapping) and isinstance(dst.get(key), dict):
            _merge_raw(dst[key], value)
        else:
            dst[key] = _plain_copy(value)


def _dotted_keys(data: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in data.items():
        full = f"{prefix}{key}"
        yield full
        if isinstance(value, Mapping):
            yield from _dotted_keys(value, full + ".")


# ---------------------------------------------------------------------------------------
# Checked merge into a CfgNode
# ---------------------------------------------------------------------------------------
def _merge_mapping(
    node: CfgNode,
    data: Mapping[Any, Any],
    *,
    prefix: str,
    root: CfgNode,
    origin: Callable[[str], str],
    loose: bool,
) -> None:
    for key, value in data.items():
        full_key = f"{prefix}{key}"
        source = origin(full_key)
        if not isinstance(key, str):
            raise ConfigError(
                f"Config key {full_key!r} (in {source}) must be a string, got {type(key).__name__}."
            )
        if key == BASE_KEY:
            raise ConfigError(
                f"{BASE_KEY} is only allowed at the top level of a YAML file "
                f"(found {full_key!r} in {source})."
            )
        child_loose = loose or (not prefix and key in _LOOSE_SECTIONS)
        if key not in node:
            if not child_loose:
                raise _unknown_key_error(full_key, node, prefix, root, source)
            logger.debug("Keeping config key %r (in %s) that the defaults do not define", full_key, source)
            node[key] = _literal(value) if isinstance(value, str) else _plain_copy(value)
            continue

        default = node[key]
        if isinstance(default, CfgNode):
            if isinstance(value, str):
                value = _literal(value)
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"Config key '{full_key}' (in {source}) is a section; expected a mapping of its keys "
                    f"(e.g. {next(iter(default), 'KEY')}: ...), got {value!r}."
                )
            _merge_mapping(default, value, prefix=full_key + ".", root=root, origin=origin, loose=child_loose)
            continue

        new_value = _coerce(value, default, full_key, source)
        if full_key == "VERSION" and new_value != _SUPPORTED_VERSION:
            raise ConfigError(
                f"Config VERSION {new_value!r} (in {source}) is not supported; only detectron2's "
                f"VERSION {_SUPPORTED_VERSION} format is. Convert the file with detectron2 first."
            )
        node[key] = new_value


def _literal(text: str) -> Any:
    """Parse a Python literal like yacs does; return ``text`` unchanged when it is not one."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _type_name(value: Any) -> str:
    return type(value).__name__


def _coerce(value: Any, default: Any, key: str, source: str) -> Any:
    """Return ``value`` converted to the type of ``default`` or raise ``ConfigError``."""
    if default is None:
        return _literal(value) if isinstance(value, str) else _plain_copy(value)

    if isinstance(default, str):
        if isinstance(value, str):
            parsed = _literal(value)  # strip Python quotes given on a command line
            return parsed if isinstance(parsed, str) else value
        raise _type_error(key, source, value, default, "str")

    if isinstance(value, str):
        parsed = _literal(value)
        if isinstance(default, bool) and value.strip().lower() in ("true", "false"):
            parsed = value.strip().lower() == "true"
        value = parsed

    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise _type_error(key, source, value, default, "bool (True or False)")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(key, source, value, default, "int")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _type_error(key, source, value, default, "float")
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, source, value, default, f"{_type_name(default)} (a list or tuple)")
        prototype = _element_prototype(default)
        items = [
            item if prototype is None else _coerce(item, prototype, f"{key}[{i}]", source)
            for i, item in enumerate(value)
        ]
        return type(default)(_plain_copy(items))
    # Any other default type (none in the shipped defaults): require the same type.
    if type(value) is type(default):
        return value
    raise _type_error(key, source, value, default, _type_name(default))


def _element_prototype(default: list[Any] | tuple[Any, ...]) -> Any:
    """An element to type-check items against, when all default items share one type."""
    if not default:
        return None
    first = default[0]
    if first is None or any(type(item) is not type(first) for item in default):
        return None
    return first


def _type_error(key: str, source: str, value: Any, default: Any, expected: str) -> ConfigError:
    return ConfigError(
        f"Config key '{key}' (in {source}) expects {expected} like its default {default!r}; "
        f"got {value!r} ({_type_name(value)})."
    )


def _did_you_mean(name: str, candidates: list[str], prefix: str = "") -> str:
    names = [c for c in candidates if isinstance(c, str)]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return f" Did you mean '{prefix}{close[0]}'?" if close else ""


def _unknown_key_error(
    full_key: str, node: CfgNode, prefix: str, root: CfgNode, source: str
) -> UnknownConfigKeyError:
    leaf = full_key[len(prefix):]
    message = f"Unknown config key '{full_key}' (in {source})."
    hint = _did_you_mean(leaf, list(node.keys()), prefix)
    if not hint:
        # The key may exist in another section (e.g. MODEL.NUM_CLASSES -> MODEL.FCOS.NUM_CLASSES).
        elsewhere = [k for k in _dotted_keys(root) if k.rsplit(".", 1)[-1] == leaf]
        if len(elsewhere) == 1:
            hint = f" Did you mean '{elsewhere[0]}'?"
        elif elsewhere:
            hint = " Did you mean one of " + ", ".join(f"'{k}'" for k in elsewhere[:5]) + "?"
    if not hint:
        keys = sorted(k for k in node.keys() if isinstance(k, str))
        shown = ", ".join(keys[:_MAX_LISTED_KEYS])
        if len(keys) > _MAX_LISTED_KEYS:
            shown += f", ... ({len(keys)} keys)"
        where = f"under '{prefix[:-1]}'" if prefix else "at the top level"
        hint = f" Valid keys {where}: {shown}."
    return UnknownConfigKeyError(message + hint)


# ---------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------
def get_cfg() -> CfgNode:
    """Return a fresh, unfrozen copy of the default configuration.

    Returns:
        ``CfgNode`` with detectron2's defaults plus centermask2's additions.
    """
    return CfgNode(default_config_dict())


def load_config(config_file: str | os.PathLike[str], opts: Sequence[str] = ()) -> CfgNode:
    """Load a YAML config over the defaults, apply ``KEY VALUE`` overrides, check the values the
    toolkit reads are in range (:mod:`.ranges`), and freeze it.

    Args:
        config_file: Path to a YAML config (``_BASE_`` resolved relative to it).
        opts: Flat ``["KEY", "VALUE", ...]`` overrides, e.g. ``["MODEL.DEVICE", "cpu"]``.

    Returns:
        The frozen config.

    Raises:
        FileNotFoundError: The config file or a base it names does not exist.
        UnknownConfigKeyError: A key in the file or the overrides is not a config key.
        ConfigError: A value has the wrong type or is out of range (the message names the key, the
            valid range and the file or overrides that set it), or the overrides are not KEY VALUE pairs.
    """
    path = os.fspath(config_file)
    data, origins = _load_yaml_tree(path, (), budget=[_MAX_CONFIG_FILES])
    return _build_config(data, origins, path, opts)


def load_config_text(text: str, source: str, opts: Sequence[str] = ()) -> CfgNode:
    """:func:`load_config` of a resolved config held as text (an exported model's config
    metadata): no ``_BASE_``; ``source`` names it in messages."""
    data = parse_yaml_text(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a mapping of keys (e.g. 'MODEL: ...'), got a {type(data).__name__}.")
    if BASE_KEY in data:
        raise ConfigError(f"{source} names {BASE_KEY}; a resolved config has no bases")
    return _build_config(data, {key: source for key in _dotted_keys(data)}, source, opts)


def _build_config(data: dict[str, Any], origins: Mapping[str, str], source: str, opts: Sequence[str]) -> CfgNode:
    """The defaults, ``data`` over them (``origins``: where each dotted key was set, else
    ``source``), then ``opts``; ranges checked; frozen."""
    from .ranges import check_config_ranges

    cfg = get_cfg()
    cfg._merge_staged([(data, lambda key: origins.get(key, source))])
    cfg.merge_from_list(opts)
    overridden = set(list(opts)[0::2]) if not isinstance(opts, (str, bytes)) else set()
    check_config_ranges(cfg, lambda key: _OVERRIDES_SOURCE if key in overridden else origins.get(key, "the defaults"))
    cfg.freeze()
    return cfg
