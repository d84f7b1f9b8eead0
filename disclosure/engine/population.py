"""Populations: which rows of which dataset a table describes.

A population is plain JSON, ``{"dataset": "admissions", "filters": [...]}``. ``filters`` is a predicate on
columns: a list of terms that must all hold (a conjunction). A term is one of

* ``{"column": "sex", "op": "==", "value": "F"}`` with op ``== != < <= > >=``,
  ``in``/``notin`` (value a list), ``notna``/``isna`` (no value);
* ``{"any": [[term, ...], [term, ...]]}``: at least one of the listed conjunctions holds (a disjunction);
* ``{"not": [term, ...]}``: the conjunction does not hold.

``filters: None`` means the filters are *unknown* (the table was built from a frame whose filtering was not
captured): such a population can be neither re-computed nor reasoned about, and the checks treat it as
*review*, never *pass*. ``filters: []`` means the whole dataset.

Pure: no web framework or database; pandas only to evaluate a predicate on a frame.
"""

from __future__ import annotations

import ast
import math
import operator
from typing import Any

import pandas as pd

COMPARISONS = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
SET_OPS = ("in", "notin")
NULL_OPS = ("notna", "isna")
MAX_TERMS = 200  # a predicate is small: a longer one is refused rather than evaluated


def population(dataset: str | None, filters: list[dict] | None) -> dict[str, Any]:
    """A population record (filters validated; ``None`` kept as "unknown")."""
    if filters is not None:
        validate(filters)
    return {"dataset": dataset, "filters": None if filters is None else list(filters)}


def is_known(pop: dict[str, Any] | None) -> bool:
    """Both the dataset and the filters are known, so the population can be re-computed and compared."""
    return bool(pop) and bool(pop.get("dataset")) and pop.get("filters", []) is not None  # type: ignore[union-attr]


def validate(filters: Any, _count: list[int] | None = None) -> None:
    """Raise ``ValueError`` unless ``filters`` is a well-formed predicate."""
    count = _count if _count is not None else [0]
    if not isinstance(filters, list):
        raise ValueError("filters must be a list of terms")
    for term in filters:
        count[0] += 1
        if count[0] > MAX_TERMS:
            raise ValueError(f"a predicate may hold at most {MAX_TERMS} terms")
        if not isinstance(term, dict):
            raise ValueError(f"a filter term must be an object, not {type(term).__name__}")
        if "any" in term:
            if not isinstance(term["any"], list) or not term["any"]:
                raise ValueError("'any' needs a non-empty list of conjunctions")
            for branch in term["any"]:
                validate(branch, count)
            continue
        if "not" in term:
            validate(term["not"], count)
            continue
        op = term.get("op")
        if not isinstance(term.get("column"), str):
            raise ValueError("a filter term names its column")
        if op in COMPARISONS:
            if "value" not in term or isinstance(term["value"], list | dict):
                raise ValueError(f"{op!r} compares with one value")
        elif op in SET_OPS:
            if not isinstance(term.get("value"), list):
                raise ValueError(f"{op!r} needs a list of values")
        elif op not in NULL_OPS:
            raise ValueError(f"unsupported filter operator {op!r}")


def mask(data: pd.DataFrame, filters: list[dict]) -> pd.Series:
    """Boolean mask of the rows of ``data`` in the population."""
    out = pd.Series(True, index=data.index)
    for term in filters:
        out &= _term_mask(data, term)
    return out


def _term_mask(data: pd.DataFrame, term: dict) -> pd.Series:
    if "any" in term:
        hit = pd.Series(False, index=data.index)
        for branch in term["any"]:
            hit |= mask(data, branch)
        return hit
    if "not" in term:
        return ~mask(data, term["not"])
    col = data[term["column"]]
    op = term["op"]
    if op == "in":
        return col.isin(term["value"])
    if op == "notin":
        return ~col.isin(term["value"])
    if op == "notna":
        return col.notna()
    if op == "isna":
        return col.isna()
    return COMPARISONS[op](col, term["value"]).fillna(False).astype(bool)


# --- query strings ---------------------------------------------------------------------------------------
_AST_OPS = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.In: "in",
    ast.NotIn: "notin",
}
_MIRROR = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def parse_query(expr: str, columns: Any = ()) -> list[dict]:
    """The predicate of a ``DataFrame.query`` string, or ``ValueError`` if it is not a plain one.

    Plain means: comparisons of a column with literals (``sex == "F"``, ``age >= 18``, ``18 <= age < 65``,
    ``band in ["a", "b"]``), joined with ``and``/``or``/``not`` and parentheses. Anything else (``@`` local
    variables, function calls, arithmetic, comparing two columns) is refused, so the caller can mark the
    population unknown instead of guessing.
    """
    if not isinstance(expr, str) or "@" in expr or "`" in expr:
        raise ValueError("only plain query strings (no @variables or backticks) can be captured")
    try:
        tree = ast.parse(expr.replace("&", " and ").replace("|", " or "), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not a query this can read: {exc.msg}") from None
    known = set(columns)
    filters = _conjunction(tree.body, known)
    validate(filters)
    return filters


def _conjunction(node: ast.AST, columns: set) -> list[dict]:
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And):
        return [t for v in node.values for t in _conjunction(v, columns)]
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
        return [{"any": [_conjunction(v, columns) for v in node.values]}]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.Invert):
        return [{"not": _conjunction(node.operand, columns)}]
    if isinstance(node, ast.Compare):
        terms = []
        left = node.left
        for op, right in zip(node.ops, node.comparators, strict=True):
            terms.append(_comparison(left, op, right, columns))
            left = right
        return terms
    raise ValueError(f"cannot capture {ast.unparse(node)!r}")


def _comparison(left: ast.AST, op: ast.cmpop, right: ast.AST, columns: set) -> dict:
    name = _AST_OPS.get(type(op))
    if name is None:
        raise ValueError(f"unsupported comparison {type(op).__name__}")
    if isinstance(left, ast.Name) and not isinstance(right, ast.Name):
        column, value, flipped = left.id, _literal(right), False
    elif isinstance(right, ast.Name) and not isinstance(left, ast.Name) and name not in SET_OPS:
        column, value, flipped = right.id, _literal(left), True
    else:
        raise ValueError("a captured comparison is between one column and literal values")
    if columns and column not in columns:
        raise ValueError(f"no column {column!r}")
    if name in SET_OPS:
        if not isinstance(value, list | tuple | set):
            raise ValueError("'in' needs a list of values")
        return {"column": column, "op": name, "value": list(value)}
    if isinstance(value, list | tuple | set | dict):
        raise ValueError("a comparison is with one value")
    return {"column": column, "op": _MIRROR[name] if flipped else name, "value": value}


def _literal(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise ValueError(f"{ast.unparse(node)!r} is not a literal value") from None


# --- reasoning about two populations -----------------------------------------------------------------------
OTHER = "\x00other"  # in a joint frame: every value of a column not listed explicitly


def holds(term: dict, cell: dict[str, Any]) -> bool | None:
    """Does ``term`` hold for every row of a joint-frame cell (column -> label, ``OTHER`` for the rest)?

    ``None`` when it cannot be told from the labels (a column not in the cell, a range test on ``OTHER``).
    """
    if "any" in term:
        results = [all_hold(branch, cell) for branch in term["any"]]
        if any(r is True for r in results):
            return True
        return False if all(r is False for r in results) else None
    if "not" in term:
        inner = all_hold(term["not"], cell)
        return None if inner is None else not inner
    column = term["column"]
    if column not in cell:
        return None
    label, op = cell[column], term["op"]
    value: Any = term.get("value")
    if op in NULL_OPS:
        return None if label == OTHER else (op == "notna")
    if label == OTHER:
        if op == "==":
            return False
        if op == "!=":
            return True
        if op == "in":
            return False
        if op == "notin":
            return True
        return None
    if op == "in":
        return label in value
    if op == "notin":
        return label not in value
    try:
        return bool(COMPARISONS[op](label, value))
    except TypeError:
        return None


def all_hold(filters: list[dict], cell: dict[str, Any]) -> bool | None:
    results = [holds(t, cell) for t in filters]
    if any(r is False for r in results):
        return False
    return True if all(r is True for r in results) else None


def listed_values(filters: list[dict]) -> dict[str, set]:
    """Per column, the values the predicate names with ``==``, ``!=``, ``in`` and ``notin`` (for a joint
    frame's labels); other operators are not listed."""
    out: dict[str, set] = {}
    for term in filters:
        if "any" in term:
            for branch in term["any"]:
                for k, v in listed_values(branch).items():
                    out.setdefault(k, set()).update(v)
        elif "not" in term:
            for k, v in listed_values(term["not"]).items():
                out.setdefault(k, set()).update(v)
        elif term["op"] in ("==", "!="):
            out.setdefault(term["column"], set()).add(_hashable(term["value"]))
        elif term["op"] in SET_OPS:
            out.setdefault(term["column"], set()).update(_hashable(v) for v in term["value"])
    return out


def columns_of(filters: list[dict]) -> set[str]:
    cols: set[str] = set()
    for term in filters:
        if "any" in term:
            for branch in term["any"]:
                cols |= columns_of(branch)
        elif "not" in term:
            cols |= columns_of(term["not"])
        else:
            cols.add(term["column"])
    return cols


def only_listed(filters: list[dict]) -> bool:
    """Every term is decidable from listed labels (``== != in notin`` inside any/not): such a predicate can
    be placed exactly in a joint frame of labelled cells."""
    for term in filters:
        if "any" in term:
            if not all(only_listed(b) for b in term["any"]):
                return False
        elif "not" in term:
            if not only_listed(term["not"]):
                return False
        elif term["op"] not in ("==", "!=") + SET_OPS:
            return False
    return True


def _hashable(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def key(term: dict) -> str:
    """A canonical text of a term, to tell shared terms from extra ones."""
    import json

    return json.dumps(term, sort_keys=True, default=str)


def split_terms(a: list[dict], b: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """(shared, only in a, only in b) terms of two conjunctions."""
    ka, kb = {key(t): t for t in a}, {key(t): t for t in b}
    shared = [ka[k] for k in ka if k in kb]
    return shared, [ka[k] for k in ka if k not in kb], [kb[k] for k in kb if k not in ka]


def disjoint(a: list[dict], b: list[dict]) -> bool:
    """Provably no row is in both populations (checked term by term on the same column; ``False`` means
    "not proved", never "overlapping")."""
    for ta in a:
        for tb in b:
            if "column" in ta and "column" in tb and ta["column"] == tb["column"] and _terms_disjoint(ta, tb):
                return True
    return False


def _allowed(term: dict) -> tuple[set | None, set]:
    """(values allowed, values excluded) for a set-like term."""
    op = term["op"]
    if op == "==":
        return {_hashable(term["value"])}, set()
    if op == "in":
        return {_hashable(v) for v in term["value"]}, set()
    if op == "!=":
        return None, {_hashable(term["value"])}
    if op == "notin":
        return None, {_hashable(v) for v in term["value"]}
    return None, set()


def _terms_disjoint(ta: dict, tb: dict) -> bool:
    if {ta["op"], tb["op"]} == {"notna", "isna"}:
        return True
    alla, exa = _allowed(ta)
    allb, exb = _allowed(tb)
    if alla is not None and allb is not None:
        return not (alla & allb)
    if alla is not None and allb is None and tb["op"] in ("!=", "notin"):
        return alla <= exb
    if allb is not None and alla is None and ta["op"] in ("!=", "notin"):
        return allb <= exa
    lo_a, hi_a = _interval(ta)
    lo_b, hi_b = _interval(tb)
    if lo_a is None and hi_a is None or lo_b is None and hi_b is None:
        return False
    try:
        return _before(hi_a, lo_b) or _before(hi_b, lo_a)
    except TypeError:
        return False


def _interval(term: dict) -> tuple[tuple | None, tuple | None]:
    """(lower, upper) bounds as (value, inclusive) for range terms and ``==``."""
    op, v = term["op"], term.get("value")
    if op == "==":
        return (v, True), (v, True)
    if op in (">", ">="):
        return (v, op == ">="), None
    if op in ("<", "<="):
        return None, (v, op == "<=")
    return None, None


def _before(hi: tuple | None, lo: tuple | None) -> bool:
    if hi is None or lo is None:
        return False
    if hi[0] < lo[0]:
        return True
    return hi[0] == lo[0] and not (hi[1] and lo[1])
