"""Render a chat template safely: jinja2's ImmutableSandboxedEnvironment with a time and size budget
(`lowbit.prompts.sandbox`), after refusing templates that walk into Python internals or load other templates.

Templates are Jinja code shipped inside model files; an unsandboxed renderer was a remote-code-execution hole
in llama-cpp-python (CVE-2024-34359). `lowbit.prompts.chat` builds prompts with it, `lowbit.prompts.tokens`
finds a model's role tokens with it.
"""

from __future__ import annotations

from functools import lru_cache

from jinja2 import nodes
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.sandbox import (
    UNSAFE_ASYNC_GENERATOR_ATTRIBUTES,
    UNSAFE_COROUTINE_ATTRIBUTES,
    UNSAFE_FUNCTION_ATTRIBUTES,
    UNSAFE_GENERATOR_ATTRIBUTES,
    UNSAFE_METHOD_ATTRIBUTES,
)

from lowbit import LowbitError
from lowbit.prompts.sandbox import DEFAULT_LIMITS, LimitExceeded, Limits, make_environment, render_limited

_INTERNAL_NAMES = {
    "mro",
    "f_globals",
    "f_locals",
    "f_builtins",
    "f_code",
    "co_code",
    "gi_frame",
    "gi_code",
    "cr_frame",
    "cr_code",
    "ag_frame",
    "ag_code",
    "func_globals",
    "func_code",
}



@lru_cache(maxsize=1)
def sandbox():
    """The one Jinja environment templates run in: jinja2's ImmutableSandboxedEnvironment, configured like
    transformers' chat renderer, with a time and size budget on every render (`lowbit.prompts.sandbox`)."""
    return make_environment()


# Real chat templates are a few KB (the largest known are tens of KB); anything past this is not a template.
MAX_TEMPLATE_CHARS = 1 << 20


def unsafe_constructs(source: str) -> list[str]:
    """Attribute walks into Python internals found in a template's syntax tree (empty if none)."""
    banned = (
        _INTERNAL_NAMES
        | UNSAFE_FUNCTION_ATTRIBUTES
        | UNSAFE_METHOD_ATTRIBUTES
        | UNSAFE_GENERATOR_ATTRIBUTES
        | UNSAFE_COROUTINE_ATTRIBUTES
        | UNSAFE_ASYNC_GENERATOR_ATTRIBUTES
    )

    def bad(name) -> bool:
        return isinstance(name, str) and (name.startswith("_") or name in banned)

    if len(source) > MAX_TEMPLATE_CHARS:
        raise LowbitError(
            f"chat template of {len(source):,} characters is over the {MAX_TEMPLATE_CHARS:,} limit "
            "(real templates are a few KB); use the model's official template"
        )
    try:
        tree = sandbox().parse(source)
    except TemplateSyntaxError as exc:
        raise LowbitError(
            f"chat template does not parse (line {exc.lineno}: {exc.message}); fix or replace it"
        ) from exc
    except RecursionError:
        raise LowbitError("chat template nests too deeply to parse; use the model's official template") from None
    found = []
    for node in tree.find_all((nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
        tag = {nodes.Include: "include", nodes.Import: "import", nodes.FromImport: "from ... import",
               nodes.Extends: "extends"}[type(node)]
        found.append(f"{{% {tag} %}} (line {node.lineno}: a chat template must be self-contained, "
                     "it may not load other templates)")
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        if isinstance(node, nodes.Getattr) and bad(node.attr):
            found.append(f".{node.attr} (line {node.lineno})")
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and bad(node.arg.value):
            found.append(f"[{node.arg.value!r}] (line {node.lineno})")
        elif (
            isinstance(node, nodes.Filter)
            and node.name == "attr"
            and node.args
            and isinstance(node.args[0], nodes.Const)
            and bad(node.args[0].value)
        ):
            found.append(f"|attr({node.args[0].value!r}) (line {node.lineno})")
    return found


def render(
    template: str,
    messages: list[dict],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    limits: Limits = DEFAULT_LIMITS,
    **extra,
) -> str:
    """Render `messages` with a chat template in the sandbox, within `limits` (time, output and value
    sizes); unsafe templates (Python internals, include/import/extends) are refused unrun."""
    found = unsafe_constructs(template)
    if found:
        raise LowbitError(
            "refusing to render this chat template: "
            + ("it loads other templates" if "{%" in found[0] else "it reaches into Python internals")
            + f" ({', '.join(found[:5])}); nothing was executed. Use the model's official template."
        )
    variables = dict(
        messages=messages,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
        **extra,
    )
    try:
        return render_limited(sandbox(), template, variables, limits)
    except LimitExceeded as exc:
        raise LowbitError(f"chat template stopped: {exc}; use the model's official template") from None
    except SecurityError as exc:
        raise LowbitError(
            f"refusing to render this chat template: the sandbox blocked it ({exc}); "
            "use the model's official template."
        ) from exc
    except TemplateError as exc:
        raise LowbitError(f"chat template failed: {exc}") from exc
    except RecursionError:
        raise LowbitError(
            "chat template stopped: it recursed too deeply (a macro or recursive loop that calls itself "
            "without end); use the model's official template"
        ) from None
    except MemoryError:
        raise LowbitError("chat template stopped: it ran out of memory; use the model's official template") from None
    except Exception as exc:  # any other error inside template code is the template's fault, not ours
        raise LowbitError(f"chat template failed: {type(exc).__name__}: {exc}") from None
