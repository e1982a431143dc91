"""``vaultctl completion SHELL``: a completion script for bash, zsh or fish (shtab)."""

from __future__ import annotations

import argparse
from typing import Any

import shtab

from .exits import EXIT_OK
from .options import add_command
from .output import PROG

SHELLS = ("bash", "zsh", "fish")


def register(groups: Any, root: argparse.ArgumentParser) -> None:
    completion = add_command(
        groups,
        "completion",
        lambda args: print_completion(root, args.shell),
        "Print a shell completion script.",
        'Print a shell completion script. bash: eval "$(vaultctl completion bash)"; '
        'zsh: vaultctl completion zsh > "${fpath[1]}/_vaultctl"; '
        "fish: vaultctl completion fish > ~/.config/fish/completions/vaultctl.fish",
    )
    completion.add_argument("shell", choices=SHELLS, help="the shell: " + ", ".join(SHELLS))


def script(root: argparse.ArgumentParser, shell: str) -> str:
    text: str = shtab.complete(root, shell=shell, root_prefix=PROG)
    return text


def print_completion(root: argparse.ArgumentParser, shell: str) -> int:
    print(script(root, shell))
    return EXIT_OK
