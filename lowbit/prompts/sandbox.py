"""The Jinja sandbox chat templates run in, with a wall-clock limit and size limits.

jinja2's ImmutableSandboxedEnvironment stops a template from reaching Python internals, but not from
spending the machine: nested loops, string doubling, `"x" * 10**9`, `"{:>999999999}".format(x)` or a
recursive macro all run inside the sandbox. A chat template is code from a stranger's model repo, so
every render here gets a budget (`Limits`): a deadline, a cap on the rendered text, a cap on any one
string or list the template builds, and a cap on all the bytes it builds in total. The budget is
checked where a template can spend: every loop step and slice (the code generator wraps them), every
call, attribute and item access, every `~` concatenation, the `+ * ** %` operators, every filter
(sizes are estimated *before* an operation that could allocate a lot), and every piece of output.
No loader is configured, so `include`/`import`/`extends` cannot read files; `chat.render` refuses them
before anything runs.

Pure Python cannot interrupt one long C-level operation; the size checks keep each such operation
small enough that the deadline is reached between them.
"""

from __future__ import annotations

import contextvars
import functools
import io
import json
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from string import Formatter

from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import TemplateError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

MB = 1 << 20


class LimitExceeded(TemplateError):
    """A template ran past one of its limits (time, output size, one value's size, total work)."""


@dataclass(frozen=True)
class Limits:
    """What one render may spend. Real chat templates need milliseconds and kilobytes."""

    seconds: float = 5.0  # wall clock for the whole render
    output_chars: int = 4 * MB  # the rendered text
    value_chars: int = 4 * MB  # any one string or list built on the way (a list item counts ITEM_COST)
    total_chars: int = 64 * MB  # everything built on the way, summed (bounds memory)
    strftime_chars: int = 64  # length of a strftime_now() format


DEFAULT_LIMITS = Limits()


class Budget:
    """The running account of one render against its `Limits`."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.deadline = time.monotonic() + limits.seconds
        self.output = 0
        self.built = 0

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise LimitExceeded(
                f"the template ran longer than its {self.limits.seconds:g} s time limit "
                "(a loop that never ends, or one far too large)"
            )

    def allow(self, size: int, what: str) -> None:
        """Refuse, before it is built, a value of `size` characters or items."""
        self.tick()
        if size > self.limits.value_chars:
            raise LimitExceeded(
                f"{what} would be {size:,} characters (a list item counts {ITEM_COST}), over the "
                f"{self.limits.value_chars:,} limit for one value in a chat template"
            )
        self.built += size
        if self.built > self.limits.total_chars:
            raise LimitExceeded(
                f"the template built more than {self.limits.total_chars:,} characters in total "
                "(its size limit for all work)"
            )

    def built_value(self, value, what: str):
        """Account for a value that was just built (strings by length, lists and tuples by `_cost`)."""
        if isinstance(value, (str, bytes, list, tuple)):
            self.allow(_cost(value), what)
        else:
            self.tick()
        return value

    def emit(self, piece: str) -> None:
        self.tick()
        self.output += len(piece)
        if self.output > self.limits.output_chars:
            raise LimitExceeded(
                f"the rendered prompt exceeds the output limit of {self.limits.output_chars:,} characters"
            )


_BUDGET: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("lowbit_template_budget", default=None)


def budget() -> Budget:
    """The current render's budget (outside `render_limited`: a fresh one, so size limits still hold)."""
    b = _BUDGET.get()
    return b if b is not None else Budget(DEFAULT_LIMITS)


# ---------------------------------------------------------------------------------------------
# size estimates made before an operation allocates


# A list or tuple item is at least a pointer: it counts as this many characters.
ITEM_COST = 8


def _cost(x, n: int | None = None) -> int:
    """What `x` (or `n` items like it) costs against the limits: characters, or items x ITEM_COST."""
    n = len(x) if n is None else n
    return n * ITEM_COST if isinstance(x, (list, tuple)) else n


def _size(x) -> int:
    return _cost(x) if isinstance(x, (str, bytes, list, tuple)) else 0


def _check_mul(a, b) -> None:
    for seq, n in ((a, b), (b, a)):
        if isinstance(seq, (str, bytes, list, tuple)) and isinstance(n, int):
            budget().allow(_cost(seq, len(seq) * max(n, 0)), "a repeated value (*)")
            return
    if isinstance(a, int) and isinstance(b, int) and a.bit_length() + b.bit_length() > 64 * 1024:
        raise LimitExceeded("an integer product over 65536 bits: refused in a chat template")


def _check_pow(a, b) -> None:
    if isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1:
        if a.bit_length() * b > 64 * 1024:
            raise LimitExceeded("an integer power over 65536 bits: refused in a chat template")


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\d+|\*)?(?:\.(\d+|\*))?")
_BRACE_NUMBER = re.compile(r"\d+")


def _check_widths(numbers: Iterable[str], what: str) -> None:
    for n in numbers:
        if n and n.isdigit() and int(n) > budget().limits.value_chars:
            raise LimitExceeded(f"{what}: a field width of {int(n):,} is over the template size limit")


def _check_percent(fmt, args) -> None:
    if not isinstance(fmt, str):
        return
    for m in _PERCENT_SPEC.finditer(fmt):
        _check_widths(m.groups(), "%-formatting")
    _check_int_args(args if isinstance(args, (tuple, list)) else (args,), "%-formatting")


def _check_brace_format(fmt: str, args, kwargs) -> None:
    try:
        specs = [spec for _, _, spec, _ in Formatter().parse(fmt) if spec]
    except ValueError:
        return  # str.format raises its own error
    for spec in specs:
        _check_widths(_BRACE_NUMBER.findall(spec), "str.format")
    _check_int_args([*args, *kwargs.values()], "str.format")


def _check_int_args(args, what: str) -> None:
    limit = budget().limits.value_chars
    for a in args:
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > limit:
            raise LimitExceeded(f"{what}: the number {a:,} is over the template size limit ({limit:,})")


def _join_size(sep: str, items: list) -> int:
    return sum(len(x) if isinstance(x, str) else len(str(x)) for x in items) + len(sep) * max(len(items) - 1, 0)


def _replace_size(s, old, new, count=-1) -> int:
    if not (isinstance(s, str) and isinstance(old, str) and isinstance(new, str)):
        return 0
    n = len(s) + 1 if old == "" else s.count(old)
    if isinstance(count, int) and count >= 0:
        n = min(n, count)
    return len(s) + n * (len(new) - len(old))


# str methods whose integer arguments are output sizes
_WIDTH_METHODS = {"ljust", "rjust", "center", "zfill", "expandtabs"}


def _precheck_call(obj, args: tuple, kwargs: dict) -> tuple:
    """Refuse a str method call that would build too much; returns the (possibly materialized) args."""
    name = getattr(obj, "__name__", "")
    owner = getattr(obj, "__self__", None)
    if isinstance(owner, str):
        if name in _WIDTH_METHODS:
            _check_int_args([*args, *kwargs.values()], f"str.{name}")
            width = args[0] if args and isinstance(args[0], int) else 0
            budget().allow(max(width, len(owner)) * (8 if name == "expandtabs" else 1), f"str.{name}")
        elif name == "join" and args:
            items = list(args[0])
            budget().allow(_join_size(owner, items), "str.join")
            args = (items, *args[1:])
        elif name == "replace" and len(args) >= 2:
            budget().allow(_replace_size(owner, *args[:3]), "str.replace")
    return args


# ---------------------------------------------------------------------------------------------
# filters: ticked, size-checked before, accounted after

# filters that build a list with one item per input item
_LIST_FILTERS = {"list", "sort", "unique", "batch", "slice", "dictsort"}
_FILTER_WIDTH_ARGS = {"center", "indent", "truncate", "wordwrap", "batch", "slice", "tojson", "pprint", "format"}


def _guard_filter(name: str, func):
    @functools.wraps(func)  # keeps jinja's pass_context/pass_eval_ctx marker
    def guarded(*args, **kwargs):
        b = budget()
        b.tick()
        plain = [a for a in args if not isinstance(a, Context) and type(a).__name__ != "EvalContext"]
        if name in _FILTER_WIDTH_ARGS:
            _check_int_args([*plain[1:], *kwargs.values()], f"the {name} filter")
        if name in _LIST_FILTERS and plain and isinstance(plain[0], (str, list, tuple, dict)):
            b.allow(len(plain[0]) * ITEM_COST, f"the {name} filter")  # a list of that many items
        if name == "format" and plain:
            _check_percent(plain[0], tuple(plain[1:]))
        elif name == "join" and plain:
            items = list(plain[0])
            sep = plain[1] if len(plain) > 1 and isinstance(plain[1], str) else kwargs.get("d", "")
            b.allow(_join_size(sep if isinstance(sep, str) else "", items), "the join filter")
            args = tuple(items if a is plain[0] else a for a in args)
        elif name == "replace" and len(plain) >= 3:
            b.allow(_replace_size(str(plain[0]), str(plain[1]), str(plain[2]), *plain[3:4]), "the replace filter")
        elif name == "center" and plain:
            width = plain[1] if len(plain) > 1 else kwargs.get("width", 80)
            b.allow(max(int(width), len(str(plain[0]))), "the center filter")
        elif name == "indent" and plain:
            width = plain[1] if len(plain) > 1 else kwargs.get("width", 4)
            per_line = len(width) if isinstance(width, str) else int(width)
            text = str(plain[0])
            b.allow(len(text) + (text.count("\n") + 1) * per_line, "the indent filter")
        elif name == "sum" and plain:
            items = list(plain[0])
            start = plain[2] if len(plain) > 2 else kwargs.get("start", 0)
            if isinstance(start, (str, list, tuple)) or any(isinstance(x, (str, list, tuple)) for x in items[:1]):
                b.allow(_size(start) + sum(_size(x) for x in items), "the sum filter")
            args = tuple(items if a is plain[0] else a for a in args)
        return b.built_value(func(*args, **kwargs), f"the {name} filter")

    return guarded


# ---------------------------------------------------------------------------------------------
# the environment


class LimitedCodeGenerator(CodeGenerator):
    """Jinja's code generator with the budget woven in: loops and `~` concatenations are checked."""

    def visit_Template(self, node, frame=None):
        # every `for x in ITER` becomes `for x in environment.lowbit_iter(ITER)` (jinja allows no custom
        # node types, so the guard is a call of an environment attribute, which templates cannot name)
        for loop in node.find_all(nodes.For):
            it = loop.iter
            if not (isinstance(it, nodes.Call) and isinstance(it.node, nodes.EnvironmentAttribute)):
                loop.iter = nodes.Call(nodes.EnvironmentAttribute("lowbit_iter"), [it], [], None, None,
                                       lineno=loop.lineno)
        return super().visit_Template(node, frame)

    def visit_Getitem(self, node, frame) -> None:
        if isinstance(node.arg, nodes.Slice):  # jinja slices in plain Python, past environment.getitem
            self.write("environment.lowbit_built(")
            super().visit_Getitem(node, frame)
            self.write(")")
        else:
            super().visit_Getitem(node, frame)

    def visit_Concat(self, node, frame) -> None:
        self.write("environment.lowbit_join((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class LimitedSandbox(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment whose every spending point is checked against the render's budget."""

    code_generator_class = LimitedCodeGenerator
    intercepted_binops = frozenset({"+", "*", "**", "%", "//"})

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}
        self.globals.pop("lipsum", None)  # lorem ipsum of any length: nothing a chat template needs

    @staticmethod
    def lowbit_iter(iterable) -> Iterator:
        b = budget()
        b.tick()
        for item in iterable:
            b.tick()
            yield item

    @staticmethod
    def lowbit_built(value):
        return budget().built_value(value, "a slice")

    @staticmethod
    def lowbit_join(parts: tuple) -> str:
        texts = [p if isinstance(p, str) else str(p) for p in parts]
        budget().allow(sum(map(len, texts)), "a ~ concatenation")
        return "".join(texts)

    def call_binop(self, context, operator, left, right):
        b = budget()
        b.tick()
        if operator == "+":
            if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
                b.allow(_size(left) + _size(right), "a + concatenation")
        elif operator == "*":
            _check_mul(left, right)
        elif operator == "**":
            _check_pow(left, right)
        elif operator == "%":
            _check_percent(left, right)
        return b.built_value(super().call_binop(context, operator, left, right), f"the {operator} operator")

    def wrap_str_format(self, value):
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt, is_map = value.__self__, value.__name__ == "format_map"

        @functools.wraps(wrapped)
        def checked(*args, **kwargs):
            mapping = args[0] if is_map and args and isinstance(args[0], dict) else {}
            _check_brace_format(fmt, () if is_map else args, {**mapping, **kwargs})
            return wrapped(*args, **kwargs)

        return checked

    def getattr(self, obj, attribute):
        budget().tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj, argument):
        b = budget()
        b.tick()
        value = super().getitem(obj, argument)
        # a slice builds a new value; a plain item (a message's content) already exists and costs nothing
        return b.built_value(value, "a slice") if isinstance(argument, slice) else value

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's signature)
        b = budget()
        b.tick()
        args = _precheck_call(__obj, args, kwargs)
        return b.built_value(super().call(__context, __obj, *args, **kwargs), "a call's result")


def strftime_now(fmt: str) -> str:
    """transformers' `strftime_now` with a bounded format: short, plain `%X` conversions only (no widths)."""
    limit = budget().limits.strftime_chars
    if not isinstance(fmt, str) or len(fmt) > limit:
        raise LimitExceeded(f"strftime_now() format is over its length limit of {limit} characters")
    if not re.fullmatch(r"(?:[^%]|%[-_0^#]?[A-Za-z%])*", fmt):
        raise LimitExceeded(
            f"strftime_now({fmt!r}): only plain %-conversions are allowed (a width would lift the size limit)"
        )
    return datetime.now().strftime(fmt)


def raise_exception(message: str):
    raise TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    """transformers' `tojson` (non-ASCII kept, optional indent)."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def make_environment() -> LimitedSandbox:
    """The environment (configured like transformers' chat renderer) with every limit in place."""
    env = LimitedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _guard_filter("tojson", tojson)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render_limited(env: LimitedSandbox, source: str, variables: dict, limits: Limits = DEFAULT_LIMITS) -> str:
    """Compile and render `source` under `limits`; a `LimitExceeded` names the limit that was hit."""
    token = _BUDGET.set(Budget(limits))
    try:
        b = budget()
        compiled = env.from_string(source)
        out = io.StringIO()  # not a list of pieces: a million tiny str objects would cost 50x their text
        for piece in compiled.generate(**variables):
            b.emit(piece)
            out.write(piece)
        return out.getvalue()
    finally:
        _BUDGET.reset(token)
