"""Telegram, through python-telegram-bot (see `adapter.py`)."""

from adapters.telegram.adapter import TelegramAdapter

__all__ = ["TelegramAdapter"]
