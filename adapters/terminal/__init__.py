"""A chat in a terminal: the operator types commands, attaches images by their path, presses
buttons by number and finds the results saved as files (see `adapter.py`)."""

from adapters.terminal.adapter import OPERATOR, PLATFORM, USER, TerminalChat
from adapters.terminal.folder import ImageFolder
from adapters.terminal.stdin import stdin_lines

__all__ = ["OPERATOR", "PLATFORM", "USER", "ImageFolder", "TerminalChat", "stdin_lines"]
