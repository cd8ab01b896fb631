"""Reports: tables, figures and HTML/Markdown rendering of saved diagnostics."""

from .render import write_report

__all__ = ["write_report"]
