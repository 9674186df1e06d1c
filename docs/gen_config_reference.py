"""Write docs/configuration.md from the typed schema (src/cnn_train/config.py) and the group files (configs/).

    python docs/gen_config_reference.py          # rewrite docs/configuration.md
    python docs/gen_config_reference.py --check  # exit 1 if the committed page is stale

Every dataclass field becomes a row: its full key, its type (as written in config.py), its default and its
one-line meaning (the trailing `# comment` on the field, read with `tokenize`, so a field that ruff format
wrapped over several lines keeps its comment). Nested dataclasses (`trainer.early_stopping`) get their own
table. The `_target_` groups are untyped in the schema: their choices are listed from configs/<group>/*.yaml
with each file's keys, values and comments.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import re
import sys
import tokenize
import typing
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG_PY = ROOT / "src" / "cnn_train" / "config.py"
CONFIGS = ROOT / "configs"
PAGE = ROOT / "docs" / "configuration.md"
COMMAND = "python docs/gen_config_reference.py"
SKIPPED_GROUPS = ("hydra",)  # Hydra's own run/sweep settings: listed with the train defaults, not as choices

sys.path.insert(0, str(ROOT / "src"))
from cnn_train import config as schema_module  # noqa: E402  (after the path: runs from a plain checkout)

MISSING = "???"


# ----------------------------------------------------------------------------------------------- the schema
def field_comments(source: str) -> dict[tuple[str, str], str]:
    """(class name, field name) -> the `# comment` text on the field's lines, for every dataclass field."""
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    found = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                end = item.end_lineno or item.lineno
                lines = [comments[n] for n in range(item.lineno, end + 1) if n in comments]
                found[(node.name, item.target.id)] = " ".join(lines)
    return found


def field_annotations(source: str) -> dict[tuple[str, str], str]:
    """(class name, field name) -> the annotation exactly as config.py writes it."""
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    found[(node.name, item.target.id)] = ast.unparse(item.annotation)
    return found


def nested_dataclass(cls: type, name: str) -> type | None:
    """The dataclass a field holds (`trainer: TrainerConfig`, `data: DataConfig | None`), if any."""
    hint = typing.get_type_hints(cls, vars(schema_module))[name]
    for candidate in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(candidate):
            return candidate  # type: ignore[return-value]
    return None


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return MISSING


def yaml_value(value: Any) -> str:
    """A value as you would type it in an override: null, true, 1.0e-07, [0.1, 0.2], auto."""
    if isinstance(value, tuple):
        value = list(value)
    try:
        text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=1000).strip()
    except yaml.YAMLError:  # an enum or another object YAML has no plain form for
        return str(value)
    return text.removesuffix("...").strip()


def md(text: str) -> str:
    """Plain text for a table cell: pipes escaped, no raw HTML, no accidental emphasis; `code` kept."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # outside backticks
        for ch in "\\*_":
            parts[i] = parts[i].replace(ch, "\\" + ch)
        parts[i] = parts[i].replace("<", "&lt;")
        parts[i] = parts[i].replace("|", "\\|")
    return "`".join(parts)


def code(text: str) -> str:
    """A code span; a pipe in it needs no escape (Python-Markdown's tables skip pipes inside backticks)."""
    return f"`{text}`" if text else ""


@dataclasses.dataclass
class Section:
    prefix: str  # "trainer.early_stopping." ; "" for a command's own keys
    cls: type
    used_by: list[str]


def anchor(prefix: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", prefix.strip(".").lower()).strip("-") or "top"


def schema_sections() -> tuple[list[tuple[str, Section]], list[Section]]:
    """The commands' own schemas (in config.SCHEMAS order) and every nested dataclass, each once, by key."""
    roots, nested, seen = [], [], {}

    def walk(cls: type, prefix: str, user: str) -> None:
        for f in dataclasses.fields(cls):
            inner = nested_dataclass(cls, f.name)
            if inner is None:
                continue
            key = f"{prefix}{f.name}."
            if key in seen:
                seen[key].used_by.append(user)
                continue
            seen[key] = Section(key, inner, [user])
            nested.append(seen[key])
            walk(inner, key, user)

    for name, cls in schema_module.SCHEMAS.items():
        roots.append((name.removesuffix("_schema"), Section("", cls, [command_of(cls)])))
        walk(cls, "", command_of(cls))
    return roots, nested


def command_of(cls: type) -> str:
    """`cnn-predict` from the docstring `cnn-predict: classify ...`."""
    doc = (cls.__doc__ or "").strip()
    return doc.split(":", 1)[0] if doc.startswith("cnn-") else cls.__name__


def key_table(section: Section, comments: dict, annotations: dict) -> list[str]:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(section.cls):
        key = f"{section.prefix}{f.name}"
        inner = nested_dataclass(section.cls, f.name)
        meaning = md(comments.get((section.cls.__name__, f.name), ""))
        default = default_of(f)
        if inner is not None and dataclasses.is_dataclass(default):
            shown = f"[{key}.\\*](#{anchor(key)})"
            meaning = meaning or f"the keys of `{inner.__name__}`, below"
        else:
            shown = code(yaml_value(default))
        rows.append(
            f"| `{key}` | {code(annotations[(section.cls.__name__, f.name)])} | {shown} | {meaning or '—'} |"
        )
    return rows


# --------------------------------------------------------------------------------------------- the groups
def split_comment(line: str) -> tuple[str, str]:
    """`key: value   # comment` -> (`key: value`, `comment`); a # inside quotes stays in the value."""
    quote = None
    for i, ch in enumerate(line):
        if ch in "'\"" and quote in (None, ch):
            quote = None if quote else ch
        elif ch == "#" and quote is None and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line.rstrip(), ""


def yaml_rows(text: str) -> tuple[list[str], list[tuple[str, str, str]]]:
    """A group file's header comment lines, and (dotted key, value as written, comment) for each entry.

    A mapping line without a value (`args:`) is a row only when it carries a comment; list items
    (`- override /model: resnet9`) are rows of their parent key.
    """
    header: list[str] = []
    rows: list[tuple[str, str, str]] = []
    stack: list[tuple[int, str]] = []
    for raw in text.splitlines():
        body, comment = split_comment(raw)
        if not body.strip():
            if comment and not rows and not comment.startswith("@package"):
                header.append(comment)
            continue
        indent = len(body) - len(body.lstrip())
        body = body.strip()
        while stack and stack[-1][0] >= indent and not body.startswith("- "):
            stack.pop()
        parent = ".".join(k for _, k in stack)
        if body.startswith("- "):
            rows.append((parent, body[2:].strip(), comment))
            continue
        key, _, value = body.partition(":")
        path = f"{parent}.{key.strip()}" if parent else key.strip()
        if value.strip():
            rows.append((path, value.strip(), comment))
        else:
            stack.append((indent, key.strip()))
            if comment:
                rows.append((path, "", comment))
    return header, rows


def choice_table(path: Path) -> list[str]:
    """A choice's keys as you override them: `optimizer.lr`, or `trainer.max_epochs` in a `_global_` file."""
    text = path.read_text()
    header, rows = yaml_rows(text)
    scope = "" if re.search(r"^#\s*@package\s+_global_", text, flags=re.M) else f"{path.parent.name}."
    rows = [(k if k == "defaults" else scope + k, v, c) for k, v, c in rows]
    out = [f"#### `{path.stem}`", ""]
    if header:
        out += [md(" ".join(header)), ""]
    if rows:
        out += ["| key | value | meaning |", "|---|---|---|"]
        out += [f"| `{k}` | {code(v)} | {md(c) or '—'} |" for k, v, c in rows]
        out.append("")
    return out


def defaults_table(config: str) -> list[str]:
    """A primary config's defaults list: each group, its default choice, the choices there are, the comment."""
    path = CONFIGS / f"{config}.yaml"
    entries = [(v, c) for k, v, c in yaml_rows(path.read_text())[1] if k == "defaults"]
    out = ["| group | default | choices | meaning |", "|---|---|---|---|"]
    for entry, comment in entries:
        if ":" not in entry:
            continue  # the schema itself (train_schema) and _self_
        group, _, choice = (s.strip() for s in entry.partition(":"))
        group = group.removeprefix("optional ").removeprefix("override ")
        folder = CONFIGS / group
        choices = ", ".join(p.stem for p in sorted(folder.glob("*.yaml"))) if folder.is_dir() else ""
        linked = (
            f"[`{group}`](#group-{anchor(group)})"
            if (folder.is_dir() and group not in SKIPPED_GROUPS)
            else f"`{group}`"
        )
        out.append(f"| {linked} | {code(choice)} | {md(choices)} | {md(comment) or '—'} |")
    return out


def groups() -> list[str]:
    """Every folder of configs/ (but Hydra's own): its choices, and each choice's keys."""
    out: list[str] = []
    for folder in sorted(p for p in CONFIGS.iterdir() if p.is_dir() and p.name not in SKIPPED_GROUPS):
        out += [f"### {folder.name} {{#group-{anchor(folder.name)}}}", ""]
        for path in sorted(folder.glob("*.yaml")):
            out += choice_table(path)
    return out


# ------------------------------------------------------------------------------------------------ the page
def render() -> str:
    source = CONFIG_PY.read_text()
    comments, annotations = field_comments(source), field_annotations(source)
    roots, nested = schema_sections()
    out = [
        "# Configuration reference",
        "",
        f"<!-- Generated by `{COMMAND}` from src/cnn_train/config.py and configs/. Do not edit. -->",
        "",
        "Every key each command reads, with its type, its default and what it means, as declared in the typed",
        "schema `src/cnn_train/config.py`; then every choice of every config group, with the keys its file sets.",
        "A default of `???` is required: the group choice or the command line sets it. Set any key on the",
        "command line (`cnn-train trainer.max_epochs=3`); `cnn-train --cfg job` prints the composed config.",
        f"This page is generated: after changing the schema or a group file, run `{COMMAND}`.",
        "",
        "## Commands",
        "",
    ]
    for config, section in roots:
        out += [f"### {section.used_by[0]} {{#{anchor(config)}}}", ""]
        doc = (section.cls.__doc__ or "").strip().split("\n\n")[0]
        out += [
            md(" ".join(doc.split())),
            "",
            f"`configs/{config}.yaml`, schema `{section.cls.__name__}`.",
            "",
        ]
        out += [*key_table(section, comments, annotations), ""]
        if config == "train":
            out += ["Its defaults list (`configs/train.yaml`):", "", *defaults_table(config), ""]
    out += ["## Nested keys", ""]
    for section in nested:
        key = section.prefix.rstrip(".")
        users = ", ".join(dict.fromkeys(section.used_by))
        out += [f"### {key}.\\* {{#{anchor(key)}}}", "", f"`{section.cls.__name__}`, read by {users}.", ""]
        out += [*key_table(section, comments, annotations), ""]
    out += [
        "## Config groups",
        "",
        "One file per choice, `configs/<group>/<choice>.yaml`; pick one with `<group>=<choice>`. The",
        "`_target_` groups (optimizer, scheduler, augmentation, logger) are untyped in the schema: their keys",
        "are the arguments of the class or function `_target_` names, checked against its signature.",
        "",
    ]
    out += groups()
    return "\n".join(line.rstrip() for line in out).rstrip() + "\n"


def missing_comments() -> list[str]:
    """Fields that declare no one-line meaning (a nested dataclass explains itself in its own table)."""
    comments = field_comments(CONFIG_PY.read_text())
    missing = []
    for (cls_name, name), text in comments.items():
        cls = getattr(schema_module, cls_name)
        if not text and dataclasses.is_dataclass(cls) and nested_dataclass(cls, name) is None:
            missing.append(f"{cls_name}.{name}")
    return missing


def main() -> None:
    page = render()
    if "--check" in sys.argv:
        if not PAGE.is_file() or PAGE.read_text() != page:
            sys.exit(f"{PAGE.relative_to(ROOT)} is stale: run {COMMAND}")
        return
    PAGE.write_text(page)
    print(f"wrote {PAGE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
