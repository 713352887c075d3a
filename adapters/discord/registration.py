"""Slash commands built from the command layer's definitions, so that Discord shows exactly the
commands, options, ranges and choices the command layer checks.

discord.py reads a command's options from its callback's signature; each command here gets a
callback whose signature is made from its `CommandSpec`, and which hands the interaction and the
options (as discord.py converted them) to one runner.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Union

import discord
from discord import app_commands

from bot.commands import GROUP_SUMMARIES, Access, CommandSpec, OptionSpec, OptionType

Runner = Callable[[CommandSpec, discord.Interaction, dict[str, Any]], Awaitable[None]]

ADMIN_GROUP = "admin"
MAX_DESCRIPTION = 100
# Everyone's commands work in servers and in direct messages with the bot; /admin (moderation,
# and the owners' own commands) only in servers, shown by default to members who may manage the
# server (servers can change that, so the command layer checks again on every run).
EVERYWHERE = app_commands.AppCommandContext(guild=True, dm_channel=True, private_channel=False)
SERVERS_ONLY = app_commands.AppCommandContext(guild=True, dm_channel=False, private_channel=False)
INSTALLS = app_commands.AppInstallationType(guild=True, user=False)
MODERATOR_PERMISSIONS = discord.Permissions(manage_guild=True)

_PLAIN_TYPES: dict[OptionType, Any] = {
    OptionType.TEXT: str,
    OptionType.INTEGER: int,
    OptionType.NUMBER: float,
    OptionType.BOOLEAN: bool,
    OptionType.IMAGE: discord.Attachment,
    OptionType.USER: discord.User,
}


def discord_name(word: str) -> str:
    """Discord's spelling of a command word ("flux_headshot" is /flux-headshot)."""
    return word.replace("_", "-")


def register(tree: app_commands.CommandTree, specs: Iterable[CommandSpec], run: Runner) -> None:
    """Add every command to `tree`: top-level ones as they are, "admin …" ones in one group."""
    groups: dict[tuple[str, ...], app_commands.Group] = {}
    for spec in specs:
        *parents, leaf = (discord_name(word) for word in spec.path)
        parent = _group(tree, groups, tuple(parents), spec)
        command = app_commands.Command(
            name=leaf,
            description=spec.summary[:MAX_DESCRIPTION],
            callback=_callback(spec, run),
            parent=parent,
            allowed_contexts=None if parent else EVERYWHERE,
            allowed_installs=None if parent else INSTALLS,
        )
        if parent is None:
            tree.add_command(command)
        else:
            parent.add_command(command)


def _group(
    tree: app_commands.CommandTree,
    groups: dict[tuple[str, ...], app_commands.Group],
    path: tuple[str, ...],
    spec: CommandSpec,
) -> app_commands.Group | None:
    if not path:
        return None
    if path in groups:
        return groups[path]
    if path[0] != ADMIN_GROUP or spec.access == Access.EVERYONE:
        raise ValueError(f"/{spec.name}: only admin commands may be grouped, under /admin")
    parent = _group(tree, groups, path[:-1], spec)
    if parent is None:
        group = app_commands.Group(
            name=path[-1],
            description=_group_summary(spec, len(path)),
            guild_only=True,
            allowed_contexts=SERVERS_ONLY,
            allowed_installs=INSTALLS,
            default_permissions=MODERATOR_PERMISSIONS,
        )
        tree.add_command(group)
    else:
        group = app_commands.Group(
            name=path[-1], description=_group_summary(spec, len(path)), parent=parent
        )
    groups[path] = group
    return group


def _group_summary(spec: CommandSpec, depth: int) -> str:
    name = " ".join(spec.path[:depth])
    return GROUP_SUMMARIES.get(name, f"/{name.replace('_', '-')} …")[:MAX_DESCRIPTION]


def _callback(spec: CommandSpec, run: Runner) -> Callable[..., Awaitable[None]]:
    async def callback(interaction: discord.Interaction, **options: Any) -> None:
        await run(spec, interaction, options)

    parameters = [
        inspect.Parameter(
            "interaction", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=discord.Interaction
        )
    ]
    parameters += [
        inspect.Parameter(
            option.name,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=_annotation(option),
            default=inspect.Parameter.empty if option.required else None,
        )
        for option in spec.options
    ]
    callback.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    descriptions = {option.name: option.description[:MAX_DESCRIPTION] for option in spec.options}
    callback.__discord_app_commands_param_description__ = descriptions  # type: ignore[attr-defined]
    choices = {
        option.name: [app_commands.Choice(name=str(value), value=value) for value in option.choices]
        for option in spec.options
        if option.choices
    }
    if choices:
        callback.__discord_app_commands_param_choices__ = choices  # type: ignore[attr-defined]
    return callback


def _annotation(option: OptionSpec) -> Any:
    if option.type == OptionType.USER and option.allows_everyone:
        # A person or a role: the server's @everyone role stands for everyone.
        return Union[discord.User, discord.Role]  # noqa: UP007 (discord.py reads typing.Union)
    base = _PLAIN_TYPES[option.type]
    if option.choices:
        return base
    if option.type in (OptionType.INTEGER, OptionType.NUMBER):
        if option.min_value is None and option.max_value is None:
            return base
        low = None if option.min_value is None else base(option.min_value)
        high = None if option.max_value is None else base(option.max_value)
        return app_commands.Range[base, low, high]
    if option.type == OptionType.TEXT and option.max_length is not None:
        return app_commands.Range[str, None, option.max_length]
    return base
