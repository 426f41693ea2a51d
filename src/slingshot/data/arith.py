"""Step-by-step arithmetic: reduce an expression one operation at a time.

Used by the procedural teacher to write traces such as ``5 - 3 - 6 = 2 - 6 = -4``.
Exact rational arithmetic (``Fraction``) so a division never rounds; the expression
grammar is what reasoning-gym's arithmetic families emit (+ - * /, unary minus, parens).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from fractions import Fraction

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


@dataclass(frozen=True)
class Num:
    value: Fraction


@dataclass(frozen=True)
class Neg:
    operand: Node


@dataclass(frozen=True)
class Bin:
    op: str
    left: Node
    right: Node


Node = Num | Neg | Bin


def parse_expr(text: str) -> Node:
    """Parse an arithmetic expression (``×``/``÷`` accepted) into a small tree."""
    cleaned = text.replace("×", "*").replace("÷", "/").replace("−", "-")
    return _convert(ast.parse(cleaned, mode="eval").body)


def _convert(node: ast.AST) -> Node:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return Num(Fraction(str(node.value)))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _convert(node.operand)
        return Num(-inner.value) if isinstance(inner, Num) else Neg(inner)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd):
        return _convert(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return Bin(_OPS[type(node.op)], _convert(node.left), _convert(node.right))
    raise ValueError(f"unsupported expression element: {ast.dump(node)}")


def fmt_num(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"{value.numerator}/{value.denominator}"


def render(node: Node, parent_prec: int = 0, right_side: bool = False) -> str:
    """Infix text with only the parentheses the precedence needs."""
    if isinstance(node, Num):
        s = fmt_num(node.value)
        # a fraction inside a product/quotient must stay grouped
        return f"({s})" if node.value.denominator != 1 and parent_prec >= 2 else s
    if isinstance(node, Neg):
        return f"-({render(node.operand)})"
    prec = _PREC[node.op]
    s = f"{render(node.left, prec)} {node.op} {render(node.right, prec, right_side=True)}"
    needs = prec < parent_prec or (right_side and prec == parent_prec)
    return f"({s})" if needs else s


def _apply(op: str, a: Fraction, b: Fraction) -> Fraction:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        raise ZeroDivisionError("division by zero in expression")
    return a / b


def _step(node: Node) -> tuple[Node, bool]:
    """Reduce the leftmost operation whose operands are numbers; report whether one was."""
    if isinstance(node, Num):
        return node, False
    if isinstance(node, Neg):
        inner, done = _step(node.operand)
        if isinstance(inner, Num):
            return Num(-inner.value), True
        return Neg(inner), done
    if isinstance(node.left, Num) and isinstance(node.right, Num):
        return Num(_apply(node.op, node.left.value, node.right.value)), True
    left, done = _step(node.left)
    if done:
        return Bin(node.op, left, node.right), True
    right, done = _step(node.right)
    return Bin(node.op, left, right), done


def reduction_steps(text: str) -> tuple[list[str], Fraction]:
    """All intermediate forms from the original expression down to its value."""
    node = parse_expr(text)
    forms = [render(node)]
    while not isinstance(node, Num):
        node, _ = _step(node)
        forms.append(render(node))
    return forms, node.value


def evaluate(text: str) -> Fraction:
    return reduction_steps(text)[1]
