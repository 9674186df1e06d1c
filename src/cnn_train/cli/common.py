"""What every console script shares: the configs' location, and user errors as one line with exit status 2.

User errors (`UserError`, and a config Hydra could not compose: a wrong type, an unknown key or choice) become
one line on stderr and exit status 2; programming errors keep their traceback.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    InterpolationResolutionError,
    MissingMandatoryValue,
    OmegaConfBaseException,
)
from rich.console import Console
from rich.markup import escape

from cnn_train.config import register_schemas, unknown_key
from cnn_train.runtime.errors import UserError

console = Console(stderr=True, soft_wrap=True)
register_schemas()  # before any primary YAML names them in its defaults list
# A config value the user left unset (`???`) or pointed at nothing (`${nope}`) raises when it is read.
VALUE_ERRORS = (MissingMandatoryValue, InterpolationResolutionError)
USER_ERRORS = (UserError, *VALUE_ERRORS)
# What Hydra raises (with HYDRA_FULL_ERROR=1, instead of printing it) for a config it could not compose.
CONFIG_ERRORS = (ConfigCompositionException, OverrideParseException, yaml.YAMLError, *VALUE_ERRORS)


def config_dir() -> str:
    packaged = Path(__file__).resolve().parents[1] / "configs"  # a wheel carries the configs in the package
    return str(packaged if packaged.is_dir() else Path(__file__).resolve().parents[3] / "configs")


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(2)


def run_app(app: Callable[[], Any]) -> None:
    """Run a @hydra.main app; a config the user got wrong ends as one line naming the key, exit status 2."""
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing its own multi-line report
    try:
        app()
    except CONFIG_ERRORS as e:
        fail(config_error(e))


def user_error(e: Exception) -> str:
    """The one line for a user error raised while a command runs."""
    return str(e) if isinstance(e, UserError) else config_error(e)


def config_error(e: Exception) -> str:
    """`<full key>: <short reason>` for a config that did not compose or left a `???` unset."""
    if isinstance(e, OverrideParseException):
        reason = str(e).splitlines()[0]
        reason = "not valid override syntax" if e.override in reason else reason
        return f"{e.override}: {reason}; see https://hydra.cc/docs/advanced/override_grammar/basic"
    if isinstance(e, MissingConfigException) and e.missing_cfg_file and e.options is not None:
        group, _, choice = e.missing_cfg_file.rpartition("/")
        return f"{group}: no choice {choice!r} (choose {', '.join(e.options)})"
    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        return f"{e.problem_mark.name}:{e.problem_mark.line + 1}: {e.problem}"
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    source = re.match(r"In '([^']+)': ", first)  # Hydra names the config file a merge failed in
    cause = e if isinstance(e, OmegaConfBaseException) else e.__cause__ or e.__context__
    if not isinstance(cause, OmegaConfBaseException) or not cause.full_key:
        taken = re.search(r"An item is already at '([^']+)'", first)  # +key=value for a key the config has
        return f"{taken.group(1)}: already in the config; set it without the +" if taken else first
    return _omegaconf_error(cause) + (f" (in {source.group(1)}.yaml)" if source else "")


def _omegaconf_error(e: OmegaConfBaseException) -> str:
    key, parent = e.full_key, e.parent_node
    if isinstance(e, (ConfigAttributeError, ConfigKeyError)) and isinstance(parent, DictConfig):
        schema = OmegaConf.get_type(parent)
        if dataclasses.is_dataclass(schema):
            return unknown_key(key, [f.name for f in dataclasses.fields(schema)])
        return f"{unknown_key(key, [str(k) for k in parent])}; +{key}=... adds it"
    if isinstance(e, MissingMandatoryValue):
        return f"{key}: no value given (???); set it, e.g. {key}=..."
    reason = (getattr(e, "msg", None) or str(e)).splitlines()[0]
    return f"{key}: {reason[:1].lower()}{reason[1:]}"


def parse_overrides(schema: type, args: list[str]) -> DictConfig:
    """`key=value` arguments onto a schema's defaults, in Hydra's override grammar, without composing.

    For a command whose whole config is one schema (cnn-predict): the same values, types and one-line errors
    as a Hydra app, without Hydra's composition (it composes the config twice, and --help lists every config
    group of every command). Not for `+key`, `~key` or sweeps.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    cfg = OmegaConf.structured(schema)
    declared = [f.name for f in dataclasses.fields(schema)]
    for arg in args:
        if arg.startswith("-"):
            raise UserError(
                f"{arg}: not a flag this command takes (give key=value overrides; --help lists them)"
            )
    for o in OverridesParser.create().parse_overrides(args):
        key = o.key_or_group
        if o.is_sweep_override():
            text = (o.input_line or "").partition("=")[2]
            raise UserError(
                f"{key}: {text} gives several values; give one (quote it as one string: {key}='{text}')"
            )
        if o.type is OverrideType.DEL:
            raise UserError(f"~{key}: keys cannot be removed here; set {key}=null or leave it out")
        if key not in declared:  # +key=value included: the schema is the whole config
            raise UserError(unknown_key(key, declared))
        OmegaConf.update(cfg, key, o.value(), merge=False)
    return cfg


def wants_help() -> bool:
    return any(a in ("--help", "-h") for a in sys.argv[1:])


def schema_help(schema: type, usage: str) -> str:
    """`--help` from the schema itself: each key, its type, its default and its one-line comment.

    Hydra's own help lists every config group of every command (a second of work); a command whose config
    is one schema says more in less time.
    """
    comments = dict(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.+)$", inspect.getsource(schema), flags=re.M))
    rows = []
    for f in dataclasses.fields(schema):
        given = "required" if f.default == "???" else f"= {'null' if f.default is None else f.default}"
        rows.append((f.name, f"{f.type} {given}", comments.get(f.name, "")))
    width = [max(len(r[i]) for r in rows) for i in (0, 1)]
    keys = [f"  {k:<{width[0]}}  {t:<{width[1]}}  {c}".rstrip() for k, t, c in rows]
    doc = inspect.cleandoc(schema.__doc__ or "")
    return "\n".join(
        [f"usage: {usage}", "", doc, "", "keys (key=value, in Hydra's override grammar):", *keys]
    )


def checkpoint_arg(cfg: DictConfig) -> Path:
    """`ckpt=` as given, else the newest best.pt under output_root (and say which)."""
    from cnn_train.inference.inputs import newest_checkpoint

    if cfg.ckpt:
        return Path(cfg.ckpt).expanduser()
    ckpt = newest_checkpoint(cfg.output_root)
    console.print(f"using the newest checkpoint: {ckpt}", highlight=False)
    return ckpt
