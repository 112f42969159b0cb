"""Find a notebook by name and check ``-p KEY VALUE`` against its ``parameters`` cell."""

from __future__ import annotations

import ast
import io
import json
import re
import tokenize
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.errors import ConfigError

_PREFIX = re.compile(r"^\d+_")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_INT = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class Parameter:
    """One parameter a notebook declares in its ``parameters`` cell.

    Attributes:
        name: The variable name.
        type: Declared type (``int``, ``float``, ``bool``, ``str``), or the default's type when
            the cell has no annotation; empty when neither says.
        default: The default as written in the cell.
        help: The comment after the default.
    """

    name: str
    type: str
    default: str
    help: str

    def __str__(self) -> str:
        kind = f": {self.type}" if self.type else ""
        note = f"  # {self.help}" if self.help else ""
        return f"{self.name}{kind} = {self.default}{note}"


def available_notebooks(notebooks_dir: str | Path) -> list[Path]:
    """Return the notebooks in ``notebooks_dir``, sorted by name."""
    return sorted(Path(notebooks_dir).glob("*.ipynb"))


def find_notebook(name: str, notebooks_dir: str | Path) -> Path:
    """Return the notebook called ``name``, with or without its number prefix (``03_evaluate`` or ``evaluate``).

    A path to an existing ``.ipynb`` file (``notebooks/03_evaluate.ipynb``) is taken as it is.

    Raises:
        ConfigError: when no notebook or several match; the message lists the available ones.
    """
    given = Path(name)
    if given.suffix == ".ipynb" and given.is_file():
        return given
    stem = given.name.removesuffix(".ipynb")
    found = available_notebooks(notebooks_dir)
    exact = [p for p in found if p.stem == stem]
    matches = exact or [p for p in found if _PREFIX.sub("", p.stem) == stem]
    if len(matches) == 1:
        return matches[0]
    names = ", ".join(p.stem for p in found) or "none"
    what = "ambiguous" if matches else "unknown"
    raise ConfigError(f"notebook {name!r} is {what} in {notebooks_dir}; available: {names}")


def declared_parameters(notebook: str | Path) -> dict[str, Parameter]:
    """Read the parameters a notebook declares in its ``parameters`` cell, in cell order.

    Every top-level assignment to a plain name counts, annotated or not and whatever its
    default (papermill's own reader skips lines it cannot match, such as ``x: str = ""``).

    Raises:
        ConfigError: when the notebook cannot be read or its parameters cell is not valid Python.
    """
    source = _parameters_source(Path(notebook))
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ConfigError(f"{notebook}: the parameters cell is not valid Python: {exc}") from None
    comments = _line_comments(source)
    declared: dict[str, Parameter] = {}
    for node in tree.body:
        target, annotation, value = _assignment(node)
        if target is None or value is None:
            continue
        default = ast.get_source_segment(source, value) or ""
        kind = annotation if annotation in _PARSERS else _literal_type(default)
        declared[target] = Parameter(target, kind, default, comments.get(node.end_lineno or node.lineno, ""))
    return declared


def _parameters_source(notebook: Path) -> str:
    try:
        cells = json.loads(notebook.read_text(encoding="utf-8")).get("cells", [])
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{notebook}: not a readable notebook: {exc}") from None
    for cell in cells:
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            text = cell.get("source", "")
            return "".join(text) if isinstance(text, list) else str(text)
    return ""


def _assignment(node: ast.stmt) -> tuple[str | None, str, ast.expr | None]:
    """Return (name, annotation, value) of ``name = value`` or ``name: T = value``; None otherwise."""
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        annotation = node.annotation.id if isinstance(node.annotation, ast.Name) else ""
        return node.target.id, annotation, node.value
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id, "", node.value
    return None, "", None


def _line_comments(source: str) -> dict[int, str]:
    """Return each line's trailing comment text, by line number."""
    found: dict[int, str] = {}
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.COMMENT:
                found[token.start[0]] = token.string.lstrip("#").strip()
    except (tokenize.TokenError, SyntaxError):
        pass
    return found


def parse_parameters(declared: Mapping[str, Parameter], pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Turn ``-p KEY VALUE`` pairs into typed values, checked against the declared parameters.

    Args:
        declared: What :func:`declared_parameters` returned.
        pairs: Keys and values as typed on the command line; a later key wins.

    Raises:
        ConfigError: for an undeclared key (listing the declared ones with types and defaults)
            or a value that does not parse as the declared type.
    """
    values: dict[str, Any] = {}
    for key, text in pairs:
        if key not in declared:
            listed = "\n  ".join(str(p) for p in declared.values()) or "(none)"
            raise ConfigError(f"unknown parameter {key!r}; the notebook declares:\n  {listed}")
        values[key] = parse_value(declared[key], text)
    return values


def parse_value(parameter: Parameter, text: str) -> Any:
    """Parse one command-line value as ``parameter``'s type.

    Raises:
        ConfigError: when the text is not a valid value of that type.
    """
    parser = _PARSERS.get(parameter.type)
    if parser is None:
        return text
    try:
        return parser(text)
    except ValueError:
        raise ConfigError(
            f"parameter {parameter.name}: expected {parameter.type} ({_EXAMPLES[parameter.type]}), "
            f"got {text!r}; declared as {parameter}"
        ) from None


def _int(text: str) -> int:
    if not _INT.fullmatch(text.strip()):
        raise ValueError(text)
    return int(text)


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE | _FALSE:
        return low in _TRUE
    raise ValueError(text)


def _literal_type(default: str) -> str:
    try:
        value = ast.literal_eval(default)
    except (ValueError, SyntaxError):
        return ""
    return type(value).__name__ if type(value).__name__ in _PARSERS else ""


_PARSERS: dict[str, Any] = {"int": _int, "float": float, "bool": _bool, "str": str}
_EXAMPLES = {"int": "e.g. 12", "float": "e.g. 0.5", "bool": "true or false", "str": "any text"}
