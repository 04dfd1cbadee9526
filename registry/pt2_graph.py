"""What the graph of a ``.pt2`` archive may name before torch reads it.

The graph (``models/<name>.json``) is not inert. Torch resolves each node's ``target``,
and each operator passed as an argument, by ``getattr`` from the ``torch``, ``operator``
or ``math`` module, and calls it when the model runs: ``torch.serialization.os.system``
resolves as well as ``torch.ops.aten.linear.default``. It also hands every symbolic shape
expression (``expr_str``) to ``sympy.sympify``, which is ``eval``. A crafted archive could
run any code either way. So every operator must be an op of torch's operator libraries, a
pure ``operator``, ``math`` or symbolic-shape function, and every expression must be
written in the small language torch itself writes: symbols, integers, arithmetic,
comparisons, and calls of sympy's and torch's shape functions.
"""

from __future__ import annotations

import re

from registry.errors import UnsafeWeights

_SEGMENT = r"_?[A-Za-z][A-Za-z0-9_]*"  # NOTE: never a dunder: no __class__, __globals__
_OPERATOR = re.compile(
    rf"torch\.ops\.(?:aten|prims|higher_order|quantized_decomposed)\.{_SEGMENT}(?:\.{_SEGMENT})?"
    r"|_operator\.(?:getitem|add|sub|mul|floordiv|truediv|mod|pow|neg|pos|abs|eq|ne|lt|le|gt"
    r"|ge|and_|or_|xor|not_|invert|lshift|rshift)"
    rf"|math\.{_SEGMENT}"
    r"|torch\.(?:sym_float|sym_int|sym_max|sym_min|sym_not|sym_ite|sym_sqrt|sym_sum|_sym_sqrt)"
)
"""The operators a node may call, as torch writes their names."""

_EXPRESSION_CALLS = frozenset(
    {
        # NOTE: what sympy prints a shape expression with ...
        *("Symbol", "Integer", "Rational", "Float", "Max", "Min", "Abs", "Mul", "Add"),
        *("Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "Piecewise", "ITE"),
        # ... and torch.utils._sympy.functions, which torch's deserializer knows
        *("FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilDiv"),
        *("CeilToInt", "FloorToInt", "IntTrueDiv", "FloatTrueDiv", "LShift", "RShift"),
        *("IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt"),
        *("RoundDecimal", "ToFloat", "Identity", "PowByNatural", "FloatPow"),
        *("BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or", "BitwiseFn_bitwise_xor"),
        *(f"OpaqueUnaryFn_{name}" for name in ("sqrt", "cos", "cosh", "sin", "sinh", "tan")),
        *(f"OpaqueUnaryFn_{name}" for name in ("tanh", "asin", "acos", "atan", "asinh")),
        *(f"OpaqueUnaryFn_{name}" for name in ("exp", "log", "log2")),
    }
)
_EXPRESSION_KEYWORDS = frozenset(
    {"positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "zero"}
)
_EXPRESSION_CONSTANTS = frozenset({"True", "False", "oo", "zoo", "nan"})
_SYMBOL = re.compile(r"[a-z]{1,8}[0-9]{0,9}")
_TOKEN = re.compile(
    r"\s*(?:(?P<number>[0-9]{1,20}(?:\.[0-9]{1,20})?(?:e[+-]?[0-9]{1,3})?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<string>'[a-z]{1,8}[0-9]{0,9}')"
    r"|(?P<operator>//|==|!=|<=|>=|[-+*/%<>&|~(),=]))"
)
_LONGEST_EXPRESSION = 2000
_DOTTED = re.compile(r"[#\w.]{1,200}")


def check_graph(document: object, record: str) -> None:
    """Raise ``UnsafeWeights`` unless every operator and expression of the graph is one
    torch writes for a model's own computation."""
    for key, value in _items(document):
        # NOTE: what the file says is quoted only where it is a plain dotted name: an
        # error message must not carry what a crafted file chose to put in it
        operator = key in ("target", "as_operator") and isinstance(value, str)
        if operator and not _OPERATOR.fullmatch(str(value)):
            named = repr(value) if _DOTTED.fullmatch(str(value)) else "an operator"
            raise UnsafeWeights(f"{record} calls {named}, which is not a torch op")
        if key == "expr_str" and not (isinstance(value, str) and is_shape_expression(value)):
            raise UnsafeWeights(
                f"{record} holds a shape expression that is more than shape arithmetic "
                "(torch would eval it), not loaded"
            )


def is_shape_expression(text: str) -> bool:
    """Whether ``text`` is written in the language of shape expressions only: names are
    symbols or constants, called functions are shape functions, keywords are
    assumptions; no attribute, subscript, string or power that ``eval`` could abuse."""
    if len(text) > _LONGEST_EXPRESSION:
        return False
    pieces: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            return text[position:].strip() == ""
        kind = match.lastgroup or ""
        pieces.append((kind, match[kind]))
        position = match.end()
    for index, (kind, piece) in enumerate(pieces):
        following = pieces[index + 1][1] if index + 1 < len(pieces) else ""
        if piece == "*" and following == "*":
            return False  # NOTE: a power of Python integers: 2**2**99 never ends
        if kind == "string" and [p for _, p in pieces[max(index - 2, 0) : index]] != [
            "Symbol",
            "(",
        ]:
            return False  # NOTE: a quoted name only as a symbol's, never a string to use
        if kind != "name":
            continue
        if following == "(":
            allowed = piece in _EXPRESSION_CALLS
        elif following == "=":
            allowed = piece in _EXPRESSION_KEYWORDS
        else:
            allowed = piece in _EXPRESSION_CONSTANTS or _SYMBOL.fullmatch(piece) is not None
        if not allowed:
            return False
    return True


def _items(document: object) -> list[tuple[str, object]]:
    """Every key and value of every object in ``document``, however deep, without
    recursion (a crafted graph may nest deeper than Python's stack)."""
    found: list[tuple[str, object]] = []
    pending = [document]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            found.extend(value.items())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return found
