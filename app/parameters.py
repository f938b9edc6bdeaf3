"""The flows' parameters as the CLI sees them, read from the flows themselves.

A flow's signature is the one definition of its parameters: their defaults (shown in
``--help``, never passed on: an option the user did not give is left to the flow) and their
ranges and choices (checked here, before any flow run or Prefect server starts).
"""

from __future__ import annotations

import ast
import importlib.util
import typing
from functools import cache
from pathlib import Path
from typing import Any

from app.errors import UsageError


def check_arguments(
    module: str, flow: str, arguments: dict[str, Any], options: dict[str, str], command: str
) -> None:
    """Validate ``arguments`` against the flow's parameter annotations with pydantic, as
    Prefect does when the run starts. ``options`` names each parameter's command-line option."""
    from pydantic import TypeAdapter, ValidationError

    annotations = flow_annotations(module, flow)
    for name, value in arguments.items():
        if name not in annotations:
            continue
        try:
            TypeAdapter(annotations[name]).validate_python(value)
        except ValidationError as exc:
            problem = exc.errors()[0]["msg"]
            raise UsageError(
                f"{options.get(name, name)} {_shown(value)}: {problem[:1].lower()}{problem[1:]}",
                f"Give a value in range (see 'ursa {command} --help')",
            ) from None


def flow_annotations(module: str, flow: str) -> dict[str, Any]:
    """The flow's parameter annotations, evaluated from its source (see
    :func:`flow_parameters` for why): the typing and pydantic names a flow signature uses, and
    the aliases and constants it names, looked up in its module or an import or two away. A
    parameter whose annotation calls code (a validator function) is left out: the CLI's own
    option type or the flow checks it."""
    annotations = {}
    node = _flow_node(module, flow)
    for arg in node.args.args + node.args.kwonlyargs if node else []:
        if arg.annotation is None:
            continue
        try:
            annotations[arg.arg] = _evaluated(arg.annotation, module)
        except _Unresolved:
            continue
    return annotations


class _Unresolved(Exception):
    pass


def _evaluated(expression: ast.expr, module: str, depth: int = 0) -> Any:
    """``expression`` evaluated with typing's and pydantic's names and the module's aliases."""
    from typing import Annotated, Literal

    from pydantic import Field

    namespace: dict[str, Any] = {"Annotated": Annotated, "Literal": Literal, "Field": Field}
    namespace |= {t.__name__: t for t in (int, float, str, bool, list, dict, tuple)}
    for name in {n.id for n in ast.walk(expression) if isinstance(n, ast.Name)}:
        if name not in namespace and name != "None":
            namespace[name] = _named(name, module, depth)
    return eval(compile(ast.Expression(expression), module, "eval"), {}, namespace)


def _named(name: str, module: str, depth: int) -> Any:
    """The value a module-level name of ``module`` is bound to: an alias, a constant."""
    tree = _module_tree(module)
    for statement in tree.body if tree and depth < 4 else []:
        if isinstance(statement, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in statement.targets
        ):
            return _evaluated(statement.value, module, depth + 1)
        if isinstance(statement, ast.ImportFrom) and statement.module:
            for alias in statement.names:
                if (alias.asname or alias.name) == name:
                    return _named(alias.name, statement.module, depth + 1)
    raise _Unresolved(f"{module}.{name}")


class Parameter(typing.NamedTuple):
    default: str  # as shown in --help; "" when there is none or it is None ("empty")
    choices: tuple[str, ...] | None  # a Literal annotation's values


def flow_parameters(module: str, flow: str) -> dict[str, Parameter]:
    """The defaults and choices of ``flow``'s parameters in ``module``, read from its source.

    From the source, not by importing it: importing the train flow imports torch, and
    ``ursa train --help`` should not wait for that. A default or a ``Literal`` that names a
    constant is looked up in the module, or an import or two away.
    """
    node = _flow_node(module, flow)
    if node is None:
        return {}
    args = node.args.args + node.args.kwonlyargs
    defaults = [None] * (len(node.args.args) - len(node.args.defaults))
    defaults += list(node.args.defaults) + list(node.args.kw_defaults)
    return {
        a.arg: Parameter(_shown(_value(d, module)), _choices(a.annotation, module))
        for a, d in zip(args, defaults, strict=True)
    }


def _flow_node(module: str, flow: str) -> ast.FunctionDef | None:
    tree = _module_tree(module)
    for node in tree.body if tree else []:
        if isinstance(node, ast.FunctionDef) and node.name == flow:
            return node
    return None


def _choices(annotation: ast.expr | None, module: str) -> tuple[str, ...] | None:
    if not (
        isinstance(annotation, ast.Subscript)
        and isinstance(annotation.value, ast.Name)
        and annotation.value.id == "Literal"
    ):
        return None
    items = annotation.slice.elts if isinstance(annotation.slice, ast.Tuple) else [annotation.slice]
    values = [_value(item, module) for item in items]
    flat = [v for value in values for v in (value if isinstance(value, tuple | list) else [value])]
    return tuple(str(v) for v in flat) if None not in flat else None


@cache
def _module_tree(module: str) -> ast.Module | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        return None
    return ast.parse(Path(spec.origin).read_text())


def _value(node: ast.expr | None, module: str, depth: int = 0) -> Any:
    """A literal default, a module constant's value or an imported constant's; else None."""
    if node is None:
        return None
    if not isinstance(node, ast.Name):
        try:
            return ast.literal_eval(node)
        except ValueError:
            return None
    tree = _module_tree(module)
    for statement in tree.body if tree and depth < 2 else []:
        if isinstance(statement, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == node.id for t in statement.targets
        ):
            return _value(statement.value, module, depth + 1)
        if isinstance(statement, ast.ImportFrom) and statement.module:
            if any((a.asname or a.name) == node.id for a in statement.names):
                return _value(node, statement.module, depth + 1)
    return None


def _shown(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list | tuple):
        return ",".join(_shown(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)
