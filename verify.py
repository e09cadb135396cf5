"""Grade a model's final answer against a gold answer, with neither regular expressions nor sympy.

    python verify.py "... so \\boxed{\\frac{1}{2}}." "0.5"   # prints the answer and the verdict
    python verify.py --file results.jsonl      # lines of {"response": ..., "answer": ...}
    python verify.py --fallback ...            # evaluation: also read an unmarked answer in prose

SCOPE routes every rollout through `grade`: a wrong verdict either sends a correct answer to
teacher correction or reinforces a wrong one. The checker works in four steps, one section each:

1. Extraction (verify_extract.py): the last \\boxed{...}, else `####`, "the answer is ...", ...
2. Normalisation: LaTeX spellings, units, degrees, percent signs and thousands separators go.
3. Parsing and evaluation: a recursive-descent parser turns an answer into a tree, evaluated
   exactly on `fractions.Fraction` where it can be, in complex floats where not (pi, sqrt 2).
   Answers with variables are compared at a few fixed random points.
4. Structures: tuples and intervals (ordered, brackets matter), sets and lists (unordered),
   unions, matrices, equations and inequalities, multiple-choice letters and plain text.

Standard library only (and verify_extract.py); no `re` and no sympy: strings are scanned by
hand. Every input is capped in length, nesting depth, number size and exponent; the public
functions never raise.
"""

import argparse
import cmath
import functools
import json
import math
import random
from fractions import Fraction

from verify_extract import (ASCII_LOWER, END_OF_TURN, boxed_answer, clean, is_prose, match_brace,
                            phrase_answer, phrase_start, prose_answer, trim, without_thousands)

MAX_RESPONSE_CHARS = 20_000  # only the tail of a response is searched for the answer
MAX_ANSWER_CHARS = 2_000  # longer answers are compared verbatim, not parsed
MAX_DEPTH = 40  # nesting of brackets, signs and function calls the parser accepts
MAX_DIGITS = 1_000  # digits in one number literal
MAX_EXP10 = 1_000  # largest |exponent| in e-notation such as 4.5e33
MAX_BITS = 10_000  # largest numerator or denominator of an exact rational, in bits
MAX_FACTORIAL = 1_000
MAX_ITEMS = 64  # elements of a list, set, tuple or matrix
MAX_VARS = 12  # distinct variables in one comparison
N_POINTS = 6  # random points at which expressions with variables are compared
REL_TOL = 1e-6  # for values that are not exact rationals


def grade(response: str, gold: str, fallback: bool = False) -> bool:
    """Is the final answer of `response` (a bare answer is its own response) `gold`? `fallback`
    also reads an unmarked response: off for training, where that should earn nothing."""
    answer = extract_answer(response, fallback)
    return answer is not None and is_equivalent(answer, gold)


def is_equivalent(pred: str, gold: str) -> bool:
    """Are two bare answers the same answer? Never raises; False when unsure."""
    if not isinstance(pred, str) or not isinstance(gold, str):
        return False
    if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return pred.split() == gold.split()  # too long to parse safely
    try:
        preds, golds = _readings(pred), _readings(gold)
        if not preds[0] or not golds[0]:
            return False
        letter = _choice(golds[0])
        if letter and golds[0].replace(" ", "") in (letter, "(" + letter + ")"):
            return _choice(preds[0]) == letter
        return any(p == g or _same(_structure(p), _structure(g)) for p in preds for g in golds
                   ) or _rounds_to(preds[0], golds[0]) or _rounds_to(golds[0], preds[0], 7)
    except Exception:  # a bug here must cost one verdict, not a training run
        return False


def extract_answer(text: str, fallback: bool = False) -> str | None:
    """The final answer after the last </think> (None if <think> never closes) and before a chat's
    next turn: the last \\boxed{} or \\fbox{} (None if empty or unclosed), else a `####` line, else
    "the answer is ..." or "Final Answer: ...", else a short one-line response itself, else, with
    `fallback`, prose's answer. With `fallback`, a final answer stated after the last box wins."""
    if not isinstance(text, str):
        return None
    try:
        for marker in END_OF_TURN:  # what follows is the next turn of a chat, not this response
            text = text.split(marker, 1)[0]
        end = text.rfind("</think>")
        if end >= 0:
            text = text[end + len("</think>"):]
        elif "<think>" in text:
            return None  # the model stopped before it finished thinking
        text = text[-MAX_RESPONSE_CHARS:]
        answer = boxed_answer(text)
        if fallback and answer and phrase_start(text, ("final answer is", "final answer:")) > max(
                text.rfind("\\boxed"), text.rfind("\\fbox")):
            answer = None  # a final answer stated after the last box overrides it
        if answer is None and "####" in text:  # GSM8K style
            answer = text[text.rfind("####") + 4:].strip().split("\n")[0]
        if answer is None:
            answer = phrase_answer(text)
        if answer is None and len(text) <= 200 and "\n" not in (clean(text) or "\n"):
            answer = None if fallback and is_prose(text) else text  # a bare answer, maybe in $...$
        if answer is None and fallback:
            answer = prose_answer(text)
        return None if answer is None else clean(answer)
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------
# 2. Normalisation
# ---------------------------------------------------------------------------------------------

_UNICODE = str.maketrans({
    "\u2212": "-", "\u2013": "-", "\u00d7": "*", "\u00b7": "*", "\u22c5": "*", "\u00f7": "/",
    "\u2248": "=", "\u03c0": "\\pi ", "\u221e": "\\infty ", "\u2264": "\\le ", "\u2265": "\\ge ",
    "\u2260": "\\ne ", "\u222a": "\\cup ", "\u2208": "\\in ", "\u00b1": "\\pm ", "\u00b2": "^2",
    "\u00b3": "^3", "\u2032": "'", "\u2218": "\u00b0", "\u03b8": "\\theta ", "\u03b1": "\\alpha ",
    "\u03b2": "\\beta ", "\u00a0": " ", "\u2009": " ", "\u202f": " ", "\n": " ", "\t": " ",
    "~": " ", "\x00": "",
})

# LaTeX command -> replacement; "" deletes it. \( \) \[ \] are math delimiters here.
_COMMANDS = {
    **dict.fromkeys("left right big Big bigl bigr Bigl Bigr displaystyle textstyle limits boxed fbox"
                    " operatorname mathbf mathit boldsymbol bm mathbb , ! ; : $ ( ) [ ]"
                    .split(" "), ""),
    **dict.fromkeys("mbox textbf textrm textnormal textup textit textsf texttt mathrm".split(),
                    "\\text"),
    " ": " ", "quad": " ", "qquad": " ", "%": "%", "dfrac": "\\frac", "tfrac": "\\frac",
    "cfrac": "\\frac", "dbinom": "\\binom", "tbinom": "\\binom", "cdot": "*", "times": "*",
    "ast": "*", "div": "/", "lt": "<", "gt": ">", "leq": "\\le", "leqslant": "\\le", "geq": "\\ge",
    "geqslant": "\\ge", "neq": "\\ne", "circ": "\u00b0", "degree": "\u00b0", "prime": "'",
    "lvert": "|", "rvert": "|", "vert": "|", "infin": "\\infty", "approx": "=", "langle": "(",
    "rangle": ")",
}

_DIGITS = "0123456789"
_FUNCTIONS = ("arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "sqrt", "sin", "cos", "tan",
              "cot", "sec", "csc", "exp", "log", "ln")


def _is_letter(c):
    return c.isascii() and c.isalpha()


def _command_at(s, i):
    """(name, end) of the command whose backslash is s[i]: letters, or one other character."""
    k = i + 1
    while k < len(s) and _is_letter(s[k]):
        k += 1
    if k == i + 1 and k < len(s):
        k += 1
    return s[i + 1:k], k


def _rewrite_commands(s):
    """One pass over backslash commands, replacing each as _COMMANDS says."""
    out, i = [], 0
    while i < len(s):
        j = s.find("\\", i)
        if j < 0:
            out.append(s[i:])
            break
        name, k = _command_at(s, j)
        replacement = _COMMANDS.get(name)
        out.append(s[i:j] + (s[j:k] if replacement is None else replacement))
        if name in ("left", "right") and s.startswith(".", k):  # \right. is an invisible bracket
            k += 1
        i = k
    return "".join(out)


def _resolve_text(s):
    """Settle the \\text{...} groups: 'and'/'or' become commas; words at the top level are units
    ('5 \\text{cm}' -> '5') unless nothing else is left ('\\text{Evelyn}' -> 'Evelyn');
    'degrees' becomes a degree sign. Groups inside braces (a subscript) just lose the command."""
    out, words, depth, i, n = [], [], 0, 0, len(s)
    while i < n:
        c = s.find("\\", i) % (n + 1)  # the next command, or the end
        depth += s.count("{", i, c) - s.count("}", i, c)  # no escaped brace \{ before c
        out.append(s[i:c])
        name, k = _command_at(s, c) if c < n else ("", n)
        while k < n and s[k] == " ":
            k += 1
        j = match_brace(s, k) if name == "text" and k < n and s[k] == "{" else -1
        if j < 0:
            out.append(s[c:k])
            i = k
            continue
        content = s[k + 1:j].strip()
        if content in ("and", "or", ",", "and/or"):
            out.append(",")
        elif content in ("degree", "degrees"):
            out.append("\u00b0")
        elif depth == 0 and any(map(_is_letter, content)) and all(  # 'cm', 'm/s', not '(C)'
                c.isalnum() or c in " /^.-" for c in content):
            end = j + 1  # take the scripts too: \text{cm}^2, \text{s}^{-1}, \text{M}_{\odot}
            while s.startswith(("^", "_"), end):
                close = match_brace(s, end + 1) if s.startswith("{", end + 1) else -2
                if close == -1:
                    break
                end = close + 1 if close >= 0 else min(end + 2 + s.startswith("-", end + 1), n)
            content, j = content + s[j + 1:end], end - 1
            out.append("\x00")  # a placeholder, decided below
            words.append(content)
        else:
            out.append(content)
        i = j + 1
    s = "".join(out)
    if not words:
        return s
    if any(c.isalnum() or c == "\\" for c in s.replace("\x00", "")):  # the words were units
        return s.replace("\x00", "")
    for word in words:
        s = s.replace("\x00", " " + word + " ", 1)
    return s


def _drop_words(s):
    """'2 or 3' -> '2 , 3'; unit words after a number go ('5 cm' -> '5'); 'degrees' and
    'percent' become their signs."""
    words = ["," if w in ("and", "or") else w for w in s.split(" ")]
    units = []
    while len(words) > 1 and len(words[-1]) > 1:  # a unit: 'cm', 'inches^2', 'm/s^2', not 'sin'
        parts = [part for part in words[-1].rstrip(".").split("/")]
        for power in ("^2", "^3", "^{2}", "^{3}", "^{-1}", "^-1"):
            parts = [part[:-len(power)] if part.endswith(power) else part for part in parts]
        if not all(p.isascii() and p.isalpha() and p.lower() not in _FUNCTIONS + ("pi",)
                   for p in parts):
            break
        units.append(words.pop())
    if not units or not any(c.isdigit() for w in words for c in w):
        return " ".join(words + units[::-1])
    signs = {"degree": "\u00b0", "degrees": "\u00b0", "percent": "%", "percentage": "%", "pct": "%"}
    return " ".join(words) + "".join(signs.get(u.lower(), "") for u in units)


def _closes_at_end(s):
    """Is the bracket opening s closed by the last character of s, and not before?"""
    depth = 0
    for k, c in enumerate(s):
        depth += (c in "([{") - (c in ")]}")
        if depth == 0:
            return k == len(s) - 1
    return False


@functools.lru_cache(maxsize=4096)
def _readings(answer):
    """The canonical ways to read a bare answer: '50%' may mean 50 or 0.5, '90°' 90 or pi/2."""
    for old, new in ((",\\! ", ","), (",\\!", ","), ("\u2248", "\\approx")):  # 1,\! 250 is 1250
        answer = answer.replace(old, new)
    approx = answer.find("\\approx")
    if "=" in answer[:max(approx, 0)]:  # x = 1/3 \approx 0.33: the exact value is the answer
        answer = answer[:approx]
    parts = answer.split("\u221a")  # √13 is \sqrt{13}: the radical covers the number after it
    for k, part in enumerate(parts[1:], 1):
        end = len(part) - len(part.lstrip(_DIGITS + "."))
        parts[k] = "\\sqrt{" + part[:end] + "}" + part[end:] if end else "\\sqrt" + part
    s = _rewrite_commands("".join(parts).translate(_UNICODE)).replace("$", "")
    s = _drop_words(" ".join(_resolve_text(s).split()))
    for old, new in (("**", "^"), ("np.", ""), ("<=", "\\le"), (">=", "\\ge"), ("!=", "\\ne"),
                     ("^{'}", "'"), ("^'", "'"), (";", ","), ("{, }", "{,}"), (" {,}", ","),
                     ("{,}", ","), ("{}", ""), (":", "/"),
                     ("^{\u00b0}", "\u00b0"), ("^\u00b0", "\u00b0")):
        s = s.replace(old, new)
    degrees, percent = "\u00b0" in s, "%" in s
    s = trim(s.replace("\u00b0", "").replace("%", "").strip(" ="))  # '\approx 3.7' is '= 3.7'
    while s.startswith("{") and _closes_at_end(s):
        s = s[1:-1].strip()
    s = without_thousands(s) or s
    return (s,) + ("(" + s + ")/100",) * percent + ("(" + s + ")*\\pi/180",) * degrees


# ---------------------------------------------------------------------------------------------
# 3. Parsing and evaluation
# ---------------------------------------------------------------------------------------------


class _Unparsed(Exception):
    """Raised when an answer is not an expression the parser understands; it is then text."""


_OPERATOR_COMMANDS = ("frac", "sqrt", "binom", "lfloor", "rfloor", "lceil", "rceil", "le", "ge",
                      "ne", "pm", "mp", "cup", "in", "{", "}", "\\")
_ACCENTS = ("dot", "ddot", "hat", "bar", "vec", "tilde", "overline", "widehat", "widetilde")


def _name_suffix(s, i, name):
    """Subscripts and primes are part of a variable's name: x_0, x_{10}, \\omega_n, y'."""
    if s.startswith("_", i) and i + 1 < len(s):
        if s[i + 1] == "{":
            j = match_brace(s, i + 1)
            if j < 0:
                raise _Unparsed("unclosed subscript")
            sub, i = s[i + 2:j], j + 1
        elif s[i + 1] == "\\":
            sub, i = _command_at(s, i + 1)
        else:
            sub, i = s[i + 1], i + 2
        name += "_" + sub.replace(" ", "")
    while s.startswith("'", i):
        name, i = name + "'", i + 1
    return name, i


def _digits_end(s, j):
    while j < len(s) and s[j] in _DIGITS:
        j += 1
    return j


def _tokenize(s):
    """Tokens (kind, text) with kind num, name, const, func or op. Letters are one variable each
    (xy is x times y) unless they spell a function (sin, log, sqrt)."""
    toks, i, n = [], 0, len(s)
    while i < n:
        c = s[i]
        if c == " ":
            i += 1
        elif c in _DIGITS or (c == "." and i + 1 < n and s[i + 1] in _DIGITS):
            j = _digits_end(s, i)
            if s.startswith(".", j):  # 12, 3.5, .25, 1.
                j = _digits_end(s, j + 1)
            k = j + 1 + s.startswith(("+", "-"), j + 1)
            if s.startswith(("e", "E"), j) and k < n and s[k] in _DIGITS:  # 4.5e33, 1e-3
                j = _digits_end(s, k)
            text = s[i:j].lower()
            if "." in text and s.startswith("\\overline{", j):  # 0.1\overline{6} repeats the 6
                k = match_brace(s, j + 9)
                if k > j + 10 and all(d in _DIGITS for d in s[j + 10:k]):
                    text, j = text + "r" + s[j + 10:k], k + 1
            toks.append(("num", text))
            i = j
            if s.startswith("_", i):  # a base, as in 52_8: the digits are the answer
                i = match_brace(s, i + 1) + 1 if s.startswith("{", i + 1) else i + 2
                if i == 0:
                    raise _Unparsed("unclosed base")
        elif c == "\\":
            name, i = _command_at(s, i)
            if name in ("text", "begin", "end"):
                raise _Unparsed(name)
            kind = ("op" if name in _OPERATOR_COMMANDS else "func" if name in _FUNCTIONS
                    else "const" if name in ("pi", "infty") else "name")
            if kind == "name" and name in _ACCENTS and s.startswith("{", i):  # \dot{x}: one name
                j = match_brace(s, i)
                if j < 0:
                    raise _Unparsed("unclosed accent")
                name, i = name + s[i:j + 1].replace(" ", ""), j + 1
            if kind == "name":
                name, i = _name_suffix(s, i, "\\" + name)
            toks.append((kind, "\\" + name if kind == "op" else name))
        elif _is_letter(c):
            run = s[i:i + 6]  # enough to spell any function
            function = next((f for f in _FUNCTIONS + ("pi",) if run.startswith(f)), None)
            if function:
                toks.append(("const" if function == "pi" else "func", function))
                i += len(function)
            else:
                name, i = _name_suffix(s, i + 1, c)
                toks.append(("const", c) if name in ("e", "i") else ("name", name))
        else:
            toks.append(("op", c))
            i += 1
    return toks


_CLOSERS = {"(": ")", "[": "]", "{": "}", "|": "|", "\\lfloor": "\\rfloor", "\\lceil": "\\rceil"}
_WRAPPERS = {"|": "abs", "\\lfloor": "floor", "\\lceil": "ceil"}


def _parse(s):
    """The expression tree of a canonical string; _Unparsed if it is not one expression.
    Recursive descent over the tokens; trees are tuples:
    ("num", Fraction) ("var", name) ("const", "pi"|"e"|"i"|"infty") ("+", *terms) ("*", *factors)
    ("neg", x) ("inv", x) ("^", base, exponent) ("fn", name, x) ("log", x, base)
    ("root", x, index) ("binom", n, k), with name in _FUNCTIONS, abs, floor, ceil, fact.

        expr   := term (('+' | '-') term)*
        term   := signed (('*' | '/') signed | implicit power)*
        signed := ('+' | '-') signed | power
        power  := atom '!'* ('^' signed)?
    """
    toks, depth, bars = _tokenize(s)[::-1], 0, 0  # a stack, next token last; open |...| groups

    def peek():
        return toks[-1] if toks else ("end", "")

    def take(op=None):
        """The next token, which must be the operator `op` when one is given."""
        tok = toks.pop() if toks else ("end", "")
        if op and tok != ("op", op):
            raise _Unparsed("expected " + op)
        return tok

    def accept(op):
        return peek() == ("op", op) and bool(toks.pop())

    def nested(parse):
        """parse(), one level deeper: nesting is bounded by MAX_DEPTH."""
        nonlocal depth
        depth += 1
        if depth > MAX_DEPTH:
            raise _Unparsed("too deep")
        x = parse()
        depth -= 1
        return x

    def expr():
        terms = [term()]
        while peek() in (("op", "+"), ("op", "-")):
            terms.append(("neg", term()) if take()[1] == "-" else term())
        return terms[0] if len(terms) == 1 else ("+", *terms)

    def term():
        n, head = len(toks), toks[-2:]  # the next tokens, last first: is the term a whole number?
        factors = [signed()]
        whole = n - len(toks) == 1 and head[-1][0] == "num" or n - len(toks) == 2 and head[-1] in (
            ("op", "-"), ("op", "+")) and head[0][0] == "num"
        if whole and head[-(n - len(toks))][1].isdigit() and (proper := mixed_fraction()):
            factors = [("num", factors[0][1] + proper) if factors[0][0] == "num" else (
                "neg", ("num", factors[0][1][1] + proper))]  # 4 4/9 is four and four ninths
        while True:
            tok = peek()
            if accept("*") or accept("/"):
                factors.append(signed() if tok[1] == "*" else ("inv", signed()))
            elif tok[0] in ("num", "name", "const", "func") or tok[1] in (
                    "(", "[", "{", "\\frac", "\\sqrt", "\\binom", "\\lfloor", "\\lceil") or (
                    tok[1] == "|" and bars == 0):
                factor = power()  # 1\frac{4}{5} is one and four fifths
                match factors, factor, tok:  # 1\frac{4}{5} is one and four fifths
                    case [("num", w) | ("neg", ("num", w))], ("*", ("num", p), (
                            "inv", ("num", q))), ("op", "\\frac") if 0 < p < q and (
                                w.denominator == p.denominator == q.denominator == 1):
                        mixed = ("num", w + p / q)
                        factors = [mixed if factors[0][0] == "num" else ("neg", mixed)]
                    case _:
                        factors.append(factor)
            else:
                return factors[0] if len(factors) == 1 else ("*", *factors)

    def mixed_fraction():
        """The fraction p/q of integers that follows a whole number, consumed, or None; it must be
        proper: 4 4/9 is four and four ninths, 11 6/6 and 4 4/0 are not numbers."""
        if len(toks) < 3 or toks[-2] != ("op", "/") or toks[-4:-3] == [("op", "^")] or not all(
                t[0] == "num" and t[1].isdigit() for t in (toks[-1], toks[-3])):
            return None
        p, _, q = take(), take(), take()
        if int(p[1]) >= int(q[1]):
            raise _Unparsed("not a proper fraction")
        return Fraction(int(p[1]), int(q[1]))

    def signed():
        if peek() in (("op", "-"), ("op", "+")):
            return ("neg", nested(signed)) if take()[1] == "-" else nested(signed)
        return power()

    def power():
        x = nested(atom)
        while accept("!"):
            x = ("fn", "fact", x)
        return ("^", x, nested(signed)) if accept("^") else x

    def arg():
        """A braced group or, in TeX's short form, one token: \\frac43 is 4/3, \\sqrt2x is x√2."""
        kind, text = peek()
        if kind == "num" and len(text) > 1 and text[0] in _DIGITS:
            toks[-1] = ("num", text[1:])
            return ("num", Fraction(int(text[0])))
        return nested(atom)

    def atom():
        nonlocal bars
        kind, text = take()
        if kind in ("num", "name", "const"):
            return ("num", _number(text)) if kind == "num" else (
                "var" if kind == "name" else "const", text)
        if kind == "func":
            return function(text)
        if text in _CLOSERS:
            bars += text == "|"
            inner = expr()
            take(_CLOSERS[text])
            bars -= text == "|"
            return ("fn", _WRAPPERS[text], inner) if text in _WRAPPERS else inner
        if text == "\\sqrt":
            index = None
            if accept("["):
                index = expr()
                take("]")
            return ("root", arg(), index)
        if text in ("\\frac", "\\binom"):
            a, b = arg(), arg()
            return ("*", a, ("inv", b)) if text == "\\frac" else ("binom", a, b)
        raise _Unparsed("unexpected " + text)

    def function(name):
        """\\sin x, \\sin(2t), \\sin^2 x, \\sin^{-1} x, \\log_2 8, \\ln 2: a group or a run of
        simple factors is the argument."""
        base = arg() if name == "log" and accept("_") else None
        exponent = arg() if accept("^") else None
        if exponent == ("neg", ("num", 1)) and name in ("sin", "cos", "tan"):
            name, exponent = "arc" + name, None
        if peek()[1] in ("(", "[", "{"):
            x = nested(atom)
        else:
            factors = [power()]
            while peek()[0] in ("num", "name", "const"):
                factors.append(power())
            x = factors[0] if len(factors) == 1 else ("*", *factors)
        x = ("root", x, None) if name == "sqrt" else ("log", x, base) if base else ("fn", name, x)
        return x if exponent is None else ("^", x, exponent)

    tree = expr()
    if toks:
        raise _Unparsed("trailing tokens")
    return tree


def _number(text):
    """The exact value of a number literal: '4.5e33', '.25', '1.', and '0.1r6' for 0.1666..."""
    text, _, repeat = text.partition("r")
    mantissa, _, exponent = text.partition("e")
    decimals = mantissa.partition(".")[2]
    if len(mantissa.replace(".", "")) + len(repeat) > MAX_DIGITS or len(exponent) > 6:
        raise _Unparsed("number too long")
    if abs(int(exponent or "0")) > MAX_EXP10:  # checked before 10 ** e is computed
        raise _Unparsed("exponent too large")
    value = Fraction(mantissa if mantissa.strip(".") else 0)  # \frac1. leaves '.' to read
    if repeat:
        value += Fraction(int(repeat), 10 ** len(decimals) * (10 ** len(repeat) - 1))
    return value * Fraction(10) ** int(exponent or "0")


_CONSTANTS = {"pi": complex(math.pi), "e": complex(math.e), "i": 1j, "infty": complex(math.inf)}
_CMATH = {"arcsin": cmath.asin, "arccos": cmath.acos, "arctan": cmath.atan, "ln": cmath.log,
          "cot": lambda z: 1 / cmath.tan(z), "sec": lambda z: 1 / cmath.cos(z),
          "csc": lambda z: 1 / cmath.sin(z)}


def _integer(a, bounded=False):
    """The int of an exact integer, in 0..MAX_FACTORIAL if `bounded`; else ValueError."""
    if type(a) is not Fraction or a.denominator != 1 or bounded and not 0 <= a <= MAX_FACTORIAL:
        raise ValueError("not an integer in range")
    return a.numerator


def _power(a, b):
    """a^b, exact when a is rational and b an integer, or a root (real, odd roots of negatives
    allowed) that comes out exact."""
    if type(a) is Fraction and type(b) is Fraction:
        (n, d), k = a.as_integer_ratio(), b.denominator
        bits = max(n.bit_length(), d.bit_length(), 1)
        if k == 1 and bits * abs(b.numerator) <= MAX_BITS:  # checked before computing it
            return a ** b.numerator
        if 2 <= k <= 64 and bits <= 1000 and (n >= 0 or k % 2):  # x ** (1 / k) needs a float
            roots = [math.isqrt(x) if k == 2 else round(x ** (1 / k)) for x in (abs(n), d)]
            if roots[0] ** k == abs(n) and roots[1] ** k == d:
                root = Fraction(roots[0] if n >= 0 else -roots[0], roots[1])
                return _power(root, Fraction(b.numerator))
    return complex(a) ** complex(b)  # may raise OverflowError or ZeroDivisionError


def _apply(name, x):
    """A named function of one value; exact where the answer is rational."""
    if name == "abs":
        return abs(x) if type(x) is Fraction else complex(abs(x))
    if name in ("floor", "ceil"):
        if type(x) is not Fraction and abs(x.imag) > 1e-12:
            raise ValueError("floor of a complex number")
        x = x if type(x) is Fraction else x.real
        return Fraction(math.floor(x) if name == "floor" else math.ceil(x))
    if name == "fact":
        return Fraction(math.factorial(_integer(x, bounded=True)))
    if x == 0 and type(x) is Fraction and name in ("sin", "tan", "arcsin", "arctan", "sinh", "tanh"):
        return Fraction(0)
    return complex((getattr(cmath, name, None) or _CMATH[name])(complex(x)))


# How each node combines its children's values; a function's name, a root's index None pass as is.
_OPERATIONS = {
    "neg": lambda x: -1 * x,  # for a complex, as the product (-1+0j) * x
    "inv": lambda x: 1 / x,
    "^": _power,
    "root": lambda x, index: _power(x, 1 / (Fraction(2) if index is None else index)),
    "log": lambda x, base: cmath.log(complex(x)) / cmath.log(complex(base)),
    "binom": lambda n, k: Fraction(
        math.comb(_integer(n, True), _integer(k)) if _integer(k) >= 0 else 0),
    "fn": _apply,
}


def _eval(node, env):
    """Value of a tree with variables bound by env: a Fraction when exact arithmetic suffices,
    else a complex. Raises ArithmeticError or ValueError where the value is undefined."""
    kind = node[0]
    if kind in ("num", "var", "const"):
        return node[1] if kind == "num" else env[node[1]] if kind == "var" else _CONSTANTS[node[1]]
    if kind in ("+", "*"):
        total = Fraction(kind == "*")
        for child in node[1:]:
            value = _eval(child, env)
            total = total + value if kind == "+" else total * value
            if type(total) is Fraction and max(total.as_integer_ratio()).bit_length() > MAX_BITS:
                raise OverflowError("rational too large")  # exact, but no longer cheap
        return total
    return _OPERATIONS[kind](*(_eval(c, env) if type(c) is tuple else c for c in node[1:]))


def _variables(node):
    """Names of the variables in a tree."""
    if node[0] == "var":
        return {node[1]}
    return set().union(*(_variables(child) for child in node[1:] if type(child) is tuple))


# Fixed pseudo-random values for up to MAX_VARS variables: half small integers (where factorials
# and binomials are defined), half fractions. All are positive, as the lengths, masses and counts
# that answers are written in are: sqrt(r^2) counts as r.
_RNG = random.Random(1234)
_POINTS = [[Fraction(_RNG.randint(2, 12)) if k < N_POINTS // 2
            else Fraction(_RNG.randint(1, 30), _RNG.randint(2, 9)) for _ in range(MAX_VARS)]
           for k in range(N_POINTS)]


@functools.lru_cache(maxsize=4096)
def _values(tree, names):
    """Values of a tree at the random points (one point if it has no variables); None where
    undefined. Cached: a gold answer is evaluated once, not once per rollout."""
    out = []
    for point in _POINTS[:1] if not names else _POINTS:
        try:
            out.append(_eval(tree, dict(zip(names, point))))
        except (ArithmeticError, ValueError):
            out.append(None)
    return tuple(out)


def _value_pairs(a, b):
    """The values (x, y) of two trees at each random point where both are defined, and how many
    such points a verdict needs. No points when the trees have too many variables."""
    names = tuple(sorted(_variables(a) | _variables(b)))
    if len(names) > MAX_VARS:
        return [], 1
    pairs = zip(_values(a, names), _values(b, names))
    return [(x, y) for x, y in pairs if x is not None and y is not None], 2 if names else 1


def _close(x, y):
    """Equal values: exactly for two rationals, within REL_TOL for anything irrational."""
    if type(x) is Fraction and type(y) is Fraction:
        return x == y
    try:
        x, y = complex(x), complex(y)
        if not (cmath.isfinite(x) and cmath.isfinite(y)):
            return x == y  # infinities are equal only to themselves
        return abs(x - y) <= REL_TOL * max(abs(x), abs(y), 1e-6)
    except OverflowError:
        return False


def _same_value(a, b):
    """Do two trees take the same value at every random point where both are defined?"""
    if a == b:
        return True
    pairs, needed = _value_pairs(a, b)
    return len(pairs) >= needed and all(_close(x, y) for x, y in pairs)


def _proportional(a, b, positive):
    """Is a = c * b for one constant c != 0 at every point (c > 0 if `positive`)? Equations
    and inequalities are compared through their sides' differences this way."""
    pairs, needed = _value_pairs(a, b)
    zero = [(abs(x) < 1e-12, abs(y) < 1e-12) for x, y in pairs]  # exactly 0 for a Fraction
    ratios = [x / y for (x, y), (zx, _) in zip(pairs, zero) if not zx]
    if any(zx != zy for zx, zy in zero) or len(ratios) < needed:
        return False
    c = ratios[0]
    if positive and not (c > 0 if type(c) is Fraction else c.real > 0 and abs(c.imag) < 1e-12):
        return False
    return all(_close(r, c) for r in ratios)


# ---------------------------------------------------------------------------------------------
# 4. Structures and comparison
# ---------------------------------------------------------------------------------------------

_RELATIONS = ("\\le", "\\ge", "\\ne", "=", "<", ">")
_FLIPPED = {">": "<", "\\ge": "\\le"}


def _split_top(s, seps):
    """(parts, separators found) of s split at the separators that sit outside all brackets.
    A command separator (\\in) must end there: \\in does not split \\infty."""
    parts, found, depth, start, i, n = [], [], 0, 0, 0, len(s)
    while i < n:
        if depth == 0:
            sep = next((p for p in seps if s.startswith(p, i) and not (
                p[0] == "\\" and i + len(p) < n and _is_letter(s[i + len(p)]))), None)
            if sep:
                parts.append(s[start:i].strip())
                found.append(sep)
                i = start = i + len(sep)
                continue
        if s[i] == "\\" and i + 1 < n and s[i + 1] in "{}\\":  # \{ \} are brackets; \\ one token
            i += 1
        depth += (s[i] in "([{") - (s[i] in ")]}")
        i += 1
    parts.append(s[start:].strip())
    return parts, found


def _expand_pm(s):
    """'1 \\pm \\sqrt{2}' stands for two answers, '1 + \\sqrt{2}' and '1 - \\sqrt{2}'."""
    if s.count("\\pm") + s.count("\\mp") > 3 or (
            s[:1] in ("(", "[", "\\") and _closes_at_end(s[s[0] == "\\":])):
        return [s]  # a set or tuple expands its own items; more than 3 is not an answer
    for sign in ("\\pm", "\\mp"):
        k = s.find(sign)
        if k >= 0 and not (k + 3 < len(s) and _is_letter(s[k + 3])):
            return _expand_pm(s[:k] + "+" + s[k + 3:]) + _expand_pm(s[:k] + "-" + s[k + 3:])
    return [s]


def _text(s):
    """Canonical text: lower case, without a leading article, spaces or braces."""
    words = s.translate(ASCII_LOWER).replace("{", " ").replace("}", " ").split()
    if len(words) > 1 and words[0] in ("a", "an", "the"):
        words = words[1:]
    return ("text", "".join(words))


def _answers(s):
    """The comma-separated answers in s, with each \\pm read as two answers."""
    return [a for part in _split_top(s, (",",))[0] if part for a in _expand_pm(part)]


@functools.lru_cache(maxsize=8192)
def _structure(s, depth=0):
    """The structure of a canonical answer, one of
    ("list", items) comma-separated answers, ("set", items), ("seq", open, close, items) for
    tuples and intervals, ("union", parts), ("matrix", rows), ("rel", ops, sides, name) for
    equations and inequalities (name is x in an assignment x = ...; written with <, \\le, =, \\ne
    only, so that a > b becomes b < a), ("expr", tree), ("text", s)."""
    if depth > 8:
        return _text(s)
    s = _split_top(s, ("\\in",))[0][-1]  # 'x \in [1, 2]' answers [1, 2]
    items = _answers(s)
    if not items or len(items) > MAX_ITEMS:
        return _text(s)
    if len(items) > 1:
        return ("list", tuple(_structure(a, depth + 1) for a in items))
    s = items[0]
    parts = _split_top(s, ("\\cup",))[0]
    if len(parts) > 1:
        return ("union", tuple(_structure(p, depth + 1) for p in parts))
    if s[:1] in ("(", "[") and _closes_at_end(s) and s[1:].lstrip().startswith("\\begin{"):
        s = s[1:-1].strip()  # \left( \begin{array} ... \end{array} \right)
    if s.startswith("\\begin{"):
        body = s[s.find("}") + 1:s.rfind("\\end{")]  # \begin{pmatrix} a & b \\ c & d \end{pmatrix}
        if s.startswith("\\begin{array}") and body.lstrip().startswith("{"):  # column spec {cc}
            body = body.lstrip()[match_brace(body.lstrip(), 0) + 1:]
        rows = [r for r in _split_top(body, ("\\\\",))[0] if r]
        if not rows or len(rows) > MAX_ITEMS:
            return _text(s)
        return ("matrix", tuple(tuple(_structure(c, depth + 1) for c in _split_top(r, ("&",))[0])
                                for r in rows))
    if s.startswith("\\{") and s.endswith("\\}") and _closes_at_end(s[1:-1] + "}"):
        return ("set", tuple(_structure(a, depth + 1) for a in _answers(s[2:-2])))
    if s[:1] in ("(", "[") and s[-1:] in (")", "]") and _closes_at_end(s):
        inner = _split_top(s[1:-1], (",",))[0]
        if len(inner) > 1:
            return ("seq", s[0], s[-1], tuple(_structure(a, depth + 1) for a in inner))
    runs = "".join(c if _is_letter(c) else " " for c in s).split()  # plain text: 'an ellipse',
    if all(_is_letter(c) or c in " .'" for c in s) and any(  # not 'x' nor 'cot x'
            len(r) >= 2 and not r.startswith(_FUNCTIONS) for r in runs):
        return _text(s)
    sides, ops = _split_top(s, _RELATIONS)
    if len(ops) > 1 and set(ops) == {"="} and _is_name(sides[0]):  # x = 2 + 3 = 5 answers x = 5
        sides, ops = [sides[0], sides[-1]], ["="]
    if ops == ["="] and "," in sides[0] and _is_name(sides[0]):  # (a, b) = (1, 5) names a pair
        return ("rel", ("=",), (_text(sides[0]), _structure(sides[1], depth + 1)),
                "(" + ",".join(_text(n)[1] for n in _split_top(sides[0][1:-1], (",",))[0]) + ")")
    try:
        if ops:
            ops, trees = tuple(ops), tuple(("expr", _parse(side)) for side in sides)
            if any(op in _FLIPPED for op in ops) and not any(op in ("<", "\\le") for op in ops):
                ops, trees = tuple(_FLIPPED.get(op, op) for op in ops[::-1]), trees[::-1]
            name = sides[0] if ops == ("=",) and _is_name(sides[0]) else ""
            return ("rel", ops, trees, name.replace(" ", ""))
        return ("expr", _parse(s))
    except _Unparsed:
        return _text(s)


def _is_name(s):
    """Is s what an answer can name: x, a_1, f(x), a segment PQ, a pair (a, b), a ratio S_1:S_2?"""
    s = s.partition("(")[0] if s.endswith(")") and s[:1] != "(" else s.strip("()")
    try:
        names = [_tokenize(part) for part in s.replace("/", ",").split(",")]
    except _Unparsed:
        return False
    return all(toks and {kind for kind, _ in toks} == {"name"} and (
        len(toks) == 1 or all(t.isupper() for _, t in toks)) for toks in names)


def _same_items(ps, gs, ordered):
    """Do two sequences of structures match one to one, in order or in any order?"""
    if len(ps) != len(gs) or ordered:
        return len(ps) == len(gs) and all(map(_same, ps, gs))
    unused = list(gs)  # first match for each in turn: the identity first when it works
    for p in ps:
        k = next((k for k, g in enumerate(unused) if _same(p, g)), None)
        if k is None:
            return False
        del unused[k]
    return True


def _same_relation(p, g):
    """Relations match when they are the same assignment (x = 5 also matches a bare 5), when
    their sides' differences are proportional (by a positive factor for inequalities), or when
    an inequality describes the other answer's interval."""
    if p[0] == "rel" and g[0] == "rel":
        if p[3] and p[3] == g[3]:
            return _same(p[2][1], g[2][1])
        (po, ps), (go, gs) = p[1:3], g[1:3]
        if po != go:
            return False
        if len(po) > 1:
            return all(_same_value(a[1], b[1]) for a, b in zip(ps, gs))
        differences = [("+", sides[0][1], ("neg", sides[1][1])) for sides in (ps, gs)]
        return _proportional(*differences, positive=po[0] in ("<", "\\le"))
    rel, other = (p, g) if p[0] == "rel" else (g, p)
    if rel[3]:
        return _same(rel[2][1], other)
    ops, sides = rel[1], rel[2]  # an inequality in one variable against an interval
    lone = [k for k, side in enumerate(sides) if side[1][0] == "var"]
    if other[0] != "seq" or len(ops) > 2 or len(lone) != 1 or any(
            op not in ("<", "\\le") for op in ops):
        return False
    k = lone[0]  # x > 2 is (2, oo), -1 <= x < 3 is [-1, 3)
    low = sides[k - 1] if k > 0 else ("expr", ("neg", ("const", "infty")))
    high = sides[k + 1] if k + 1 < len(sides) else ("expr", ("const", "infty"))
    brackets = ("[" if k > 0 and ops[k - 1] == "\\le" else "(",
                "]" if k < len(ops) and ops[k] == "\\le" else ")")
    return _same(("seq", *brackets, (low, high)), other)


def _same(p, g):
    """Are two structures the same answer?"""
    if p == g:
        return True
    kinds = (p[0], g[0])
    for x, y in ((p, g), (g, p)):  # (a, b) = (1, 5) against a = 1, b = 5
        if x[0] == "rel" and x[3][:1] == "(" and y[0] == "list" and {i[0] for i in y[1]} == {"rel"}:
            names = "(" + ",".join(i[3] for i in y[1]) + ")"
            return names == x[3] and _same(x[2][1], ("seq", "(", ")", tuple(i[2][1] for i in y[1])))
    if "list" in kinds or "set" in kinds:
        items = [x[1] if x[0] in ("list", "set", "union") else (x,) for x in (p, g)]
        named = [len({x[3] for x in xs if x[0] == "rel" and x[3]}) == len(xs) for xs in items]
        return _same_items(*items, ordered=named[0] != named[1])  # PQ=6, RS=2 is not 2, 6
    if kinds == ("seq", "seq"):
        return p[1] == g[1] and p[2] == g[2] and _same_items(p[3], g[3], ordered=True)
    if kinds == ("union", "union"):
        return _same_items(p[1], g[1], ordered=False)
    if kinds == ("matrix", "matrix"):
        return len(p[1]) == len(g[1]) and all(
            _same_items(a, b, ordered=True) for a, b in zip(p[1], g[1]))
    if "matrix" in kinds and "seq" in kinds:  # a one-row or one-column matrix written as a tuple
        seq, rows = (p, g[1]) if p[0] == "seq" else (g, p[1])
        vector = len(rows) == 1 or all(len(row) == 1 for row in rows)
        return vector and _same_items(seq[3], tuple(c for row in rows for c in row), ordered=True)
    if "rel" in kinds:
        return _same_relation(p, g)
    if kinds == ("expr", "expr"):
        return _same_value(p[1], g[1])
    return False


def _rounds_to(exact, decimal, least=3):
    """Does an exact value round to a decimal of `least` or more significant digits (11/3 to
    3.67)? A gold decimal of 3 digits accepts its exact value; an answer needs 7 (0.0833333333333333
    for 1/12), the precision at which irrational values are compared, so 0.333 is not 1/3."""
    digits = decimal.lstrip("-").replace(".", "", 1)
    if "." not in decimal or not digits.isdigit() or len(digits.lstrip("0")) < least:
        return False
    p = _structure(exact)
    x = _values(p[1], ())[0] if p[0] == "expr" and not _variables(p[1]) else None
    unit = Fraction(1, 10 ** (len(decimal) - decimal.find(".") - 1))  # of the last digit
    return x is not None and abs(x - Fraction(decimal)) <= unit / 2


def _choice(s):
    """The multiple-choice letter an answer names: '(C)', 'C', 'C)', '(c) 12' -> 'C'; '' when it
    names none, or hedges between several ('(A) or (B)')."""
    s = "".join(c for c in s.upper() if c not in " {}")
    if sum("(" + letter + ")" in s for letter in "ABCDE") > 1:
        return ""
    s = s[1:] if s[:1] == "(" and s[2:3] == ")" else s
    return s[0] if s[:1] in tuple("ABCDE") and (len(s) == 1 or s[1] in "):.") else ""


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("response", nargs="?", help="a model response, or a bare answer")
    parser.add_argument("gold", nargs="?", help="the gold answer")
    parser.add_argument("--file", help='a JSONL file of {"response": ..., "answer": ...} to regrade')
    parser.add_argument("--fallback", action="store_true",
                        help="evaluation mode: also read an unmarked answer in prose")
    args = parser.parse_args()
    if args.file:
        verdicts, skipped = [], 0
        with open(args.file, encoding="utf-8") as f:
            for line in filter(str.strip, f):
                try:  # numbers stay text, as they were written: 0.50 is graded as "0.50"
                    row = json.loads(line, parse_int=str, parse_float=str)
                    verdicts.append(grade(row["response"], str(row["answer"]), args.fallback))
                except (KeyError, TypeError, ValueError, RecursionError):
                    skipped += 1
        right, total = sum(verdicts), len(verdicts)
        print(f"accuracy {right}/{total} = {right / max(total, 1):.4f}"
              + (f" ({skipped} unreadable lines skipped)" if skipped else ""))
    elif args.gold is not None:
        answer = extract_answer(args.response, args.fallback)
        print(f"answer: {answer}")
        print(f"correct: {answer is not None and is_equivalent(answer, args.gold)}")
    else:
        parser.error("give a response and a gold answer, or --file")


if __name__ == "__main__":
    _main()
