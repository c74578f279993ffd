"""Jupyter rendering of a program state: one block per message, generated spans marked."""

from __future__ import annotations

import html
from typing import Optional

_STYLE = (
    "<style>"
    ".lmlang-state{font-family:ui-monospace,monospace;white-space:pre-wrap;line-height:1.45}"
    ".lmlang-msg{border-left:3px solid #999;margin:4px 0;padding:2px 8px}"
    ".lmlang-role{font-weight:bold;font-size:85%;color:#555;text-transform:uppercase}"
    ".lmlang-system{border-color:#8a8a8a}.lmlang-user{border-color:#3b7dd8}.lmlang-assistant{border-color:#2e9d5b}"
    ".lmlang-gen{background:#d9f2e1}.lmlang-select{background:#fde9c9}.lmlang-marker{color:#aaa}"
    "</style>"
)


def render_html(pieces: list) -> str:
    """HTML for a state's pieces (`lmlang.stream.Piece`): consecutive pieces of one role form a
    message block; gen and select pieces are highlighted with their variable as a tooltip."""
    out = [_STYLE, '<div class="lmlang-state">']
    role: Optional[str] = None
    for piece in pieces:
        if piece.role != role:
            if role is not None:
                out.append("</div>")
            if piece.role is not None:
                out.append(f'<div class="lmlang-msg lmlang-{piece.role}"><div class="lmlang-role">{piece.role}</div>')
            role = piece.role
        if piece.kind == "marker":
            continue
        text = html.escape(piece.text)
        if piece.kind in ("gen", "select"):
            title = html.escape(piece.name or "", quote=True)
            out.append(f'<span class="lmlang-{piece.kind}" title="{title}">{text}</span>')
        else:
            out.append(text)
    if role is not None:
        out.append("</div>")
    out.append("</div>")
    return "".join(out)
