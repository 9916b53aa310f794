"""Definition sites: how a function's code is found again without shipping bytecode.

A snapshot carries the program's source.  Compiling it yields a tree of code objects;
each one is named by ``name@firstline`` (plus ``#n`` when several share a line, e.g. two
lambdas), in the order the compiler emits them, which follows the source.  A function
in a snapshot refers to its code by that name, so the restoring interpreter, whatever
its CPU or CPython 3 minor version, rebuilds the function from its own compilation.
"""

from __future__ import annotations

from types import CodeType


class SiteIndex:
    """Bidirectional map between the code objects of one compiled program and site keys."""

    def __init__(self, module_code: CodeType) -> None:
        self.module_code = module_code
        self._by_key: dict[str, CodeType] = {}
        self._by_code: dict[int, str] = {}
        seen: dict[str, int] = {}
        stack = [module_code]
        order: list[CodeType] = []
        while stack:  # depth-first, in co_consts order: source order
            code = stack.pop()
            order.append(code)
            nested = [c for c in code.co_consts if isinstance(c, CodeType)]
            stack.extend(reversed(nested))
        for code in order[1:]:
            base = f"{code.co_name}@{code.co_firstlineno}"
            n = seen.get(base, 0)
            seen[base] = n + 1
            key = base if n == 0 else f"{base}#{n}"
            self._by_key[key] = code
            self._by_code[id(code)] = key

    def key_of(self, code: CodeType) -> str | None:
        """The site key of ``code``, or None if it does not come from this program's source."""
        key = self._by_code.get(id(code))
        if key is not None and self._by_key[key] is code:
            return key
        return None

    def code_at(self, key: str) -> CodeType:
        try:
            return self._by_key[key]
        except KeyError:
            raise KeyError(f"no function is defined at site {key!r} in the source") from None

    def __len__(self) -> int:
        return len(self._by_key)
