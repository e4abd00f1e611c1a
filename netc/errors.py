"""User-facing diagnostics: one error type and one formatter.

Every mistake a user can make in their input becomes a NetcError carrying the
source span it came from; the CLI formats it as

    FILE:LINE:COL: error: message
        the offending source line
        ^~~~
    hint: ...

and exits with status 1. Warnings use the same span and formatter.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Span:
    """A region of a source file; lines and columns are 1-based, end is exclusive."""
    file: str
    line: int
    column: int
    end_line: int | None = None
    end_column: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass
class Diagnostic:
    message: str
    span: Span | None = None
    hint: str | None = None
    severity: str = "error"
    # "in instance 'inception_3a' of module 'inception' (file:line:col)" lines,
    # innermost first, so a mistake inside a module shows how it was reached.
    trace: tuple[tuple[str, Span], ...] = ()


class NetcError(Exception):
    """An error in the user's input, located in their file."""

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None,
                 trace: tuple[tuple[str, Span], ...] = ()):
        super().__init__(message)
        self.diagnostic = Diagnostic(message, span, hint, "error", trace)

    @property
    def message(self) -> str:
        return self.diagnostic.message

    @property
    def span(self) -> Span | None:
        return self.diagnostic.span

    @property
    def hint(self) -> str | None:
        return self.diagnostic.hint

    def __str__(self) -> str:
        return format_diagnostic(self.diagnostic)


def warning(message: str, span: Span | None = None, hint: str | None = None) -> Diagnostic:
    return Diagnostic(message, span, hint, "warning")


def _source_line(path: str, line: int, sources: dict[str, str] | None) -> str | None:
    text = None
    if sources is not None and path in sources:
        text = sources[path]
    else:
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
    lines = text.splitlines()
    if 1 <= line <= len(lines):
        return lines[line - 1]
    return None


def format_diagnostic(d: Diagnostic, sources: dict[str, str] | None = None) -> str:
    """Render as `file:line:col: error: msg`, the source line, a caret, trace and hint."""
    out = []
    head = f"{d.severity}: {d.message}"
    if d.span is None:
        out.append(f"netc: {head}")
    else:
        out.append(f"{d.span}: {head}")
        src = _source_line(d.span.file, d.span.line, sources)
        if src is not None:
            src = src.expandtabs(1)
            col = max(d.span.column, 1)
            width = 1
            if d.span.end_line == d.span.line and d.span.end_column:
                width = max(1, d.span.end_column - col)
            width = min(width, max(1, len(src) - col + 1))
            out.append(f"    {src}")
            out.append("    " + " " * (col - 1) + "^" + "~" * (width - 1))
    for note, span in d.trace:
        out.append(f"{span}: note: {note}")
    if d.hint:
        out.append(f"hint: {d.hint}")
    return "\n".join(out)


def nearest(name: str, candidates) -> str | None:
    """The candidate closest to a misspelt name, or None when nothing is close."""
    import difflib
    candidates = list(candidates)
    lowered = {c.lower(): c for c in candidates}
    if name.lower() in lowered:
        return lowered[name.lower()]
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    if not match:
        match = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
        match = [lowered[m] for m in match]
    return match[0] if match else None


def did_you_mean(name: str, candidates) -> str | None:
    best = nearest(name, candidates)
    return f"did you mean '{best}'?" if best else None
