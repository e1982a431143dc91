"""The README's "Using the vault" section, executed against a live development vault.

Every ``$ `` line of its ```console blocks runs, in order, in one bash session (so
``export`` and ``sed -i`` carry over) in the directory of a ``python -m vaultsvc dev``
vault started for the test, with ``vaultctl`` and ``python`` from this venv on PATH. The
output must match the README by shape: only timestamps, etags and request ids are masked,
each by the exact shape the vault prints, so any other change in output fails.

Files the transcript shows with ``cat FILE`` are created from what it shows; a
```python block introduced as `NAME.py` is written to NAME.py; any other ```python
block is a fragment run on its own after the session (with ``admin_token`` defined) and
must exit 0 silently. The README's address (127.0.0.1:50051) and the
``<... token from the banner>`` placeholders are replaced by the live vault's.

When the output changes on purpose, ``python -m tests.integration.test_readme_transcript``
re-runs the section and writes what the vault printed into the README.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "Using the vault"
README_ADDRESS = "127.0.0.1:50051"
PLACEHOLDERS = {
    "<admin token from the banner>": "admin",
    "<viewer token from the banner>": "viewer",
    "<resolver token from the banner>": "resolver",
}

#: The only volatile parts of vaultctl's output, each in the exact shape the vault prints.
MASKS = (
    (re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z(?=[\s\"]|$)"), "<time>"),
    (re.compile(r"\b[0-9a-f]{32}\b"), "<request-id>"),  # uuid4().hex
    (re.compile(r"\b[0-9a-f]{20}\b"), "<etag>"),  # token_hex(10)
)


# ------------------------------------------------------------------- the section


@dataclass
class Step:
    command: str
    expected: str


@dataclass
class Transcript:
    steps: list[Step] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    fragments: list[str] = field(default_factory=list)


def readme_section(text: str, title: str = SECTION) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def parse_console(block: str) -> list[Step]:
    steps: list[Step] = []
    lines = block.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.startswith("$ "):
            raise AssertionError(f"console block: output before any command: {line!r}")
        command = [line[2:]]
        while command[-1].endswith("\\"):
            index += 1
            command.append(lines[index])
        index += 1
        output: list[str] = []
        while index < len(lines) and not lines[index].startswith("$ "):
            output.append(lines[index])
            index += 1
        steps.append(Step("\n".join(command), "\n".join(output)))
    return steps


def parse_transcript(section: str) -> Transcript:
    transcript = Transcript()
    previous_end = 0
    for block in re.finditer(r"^```(\w+)\n(.*?)^```$", section, flags=re.DOTALL | re.MULTILINE):
        language, body = block.group(1), block.group(2)
        lead_in = section[previous_end : block.start()]
        previous_end = block.end()
        if language == "console":
            for step in parse_console(body):
                transcript.steps.append(step)
                cat = re.fullmatch(r"cat (\S+)", step.command)
                if cat and cat.group(1) not in transcript.files:
                    transcript.files[cat.group(1)] = step.expected + "\n"
        elif language == "python":
            named = re.findall(r"`(\w+\.py)`", lead_in.strip().split("\n\n")[-1])
            if named:
                transcript.files[named[-1]] = body
            else:
                transcript.fragments.append(body)
        else:
            raise AssertionError(f"unexpected ```{language} block in {SECTION!r}")
    return transcript


def shape(text: str) -> str:
    for pattern, replacement in MASKS:
        text = pattern.sub(replacement, text)
    return text


def render(steps: list[Step], outputs: list[str]) -> str:
    return "".join(
        f"$ {step.command}\n{output}\n" if output else f"$ {step.command}\n"
        for step, output in zip(steps, outputs, strict=True)
    )


# -------------------------------------------------------------------- the vault


@dataclass
class DevVault:
    address: str
    tokens: dict[str, str]
    directory: Path


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without VAULT_*, with this venv's scripts first on PATH."""
    scripts = Path(sys.executable).parent
    assert shutil.which("vaultctl", path=str(scripts)), f"vaultctl is not installed in {scripts}"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("VAULT_") and k != "RESOLVER_TOKEN"
    }
    env["PATH"] = f"{scripts}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


@contextlib.asynccontextmanager
async def dev_vault(directory: Path) -> AsyncIterator[DevVault]:
    """``python -m vaultsvc dev`` in ``directory`` (its ./.vault-data), on a free port."""
    log = directory / "dev-vault.log"
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "vaultsvc",
            "dev",
            cwd=directory,
            env=clean_environment(
                VAULT_LISTEN="127.0.0.1:0",
                VAULT_CONSOLE_LISTEN="127.0.0.1:0",
                VAULT_METRICS_LISTEN="127.0.0.1:0",
            ),
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    try:
        assert process.stdout is not None
        banner = ""
        while "Ctrl-C" not in banner or not banner.endswith("#" * 80 + "\n"):
            line = await asyncio.wait_for(process.stdout.readline(), timeout=120)
            assert line, f"dev vault exited early:\n{log.read_text(errors='replace')}"
            banner += line.decode()
        tokens = dict(re.findall(r"^ +(admin|viewer|resolver) token +: (vt_\S+)$", banner, re.M))
        address = re.search(r"listening on +: (127\.0\.0\.1:[1-9]\d*)$", banner, re.M)
        assert address is not None and len(tokens) == 3, banner
        yield DevVault(address.group(1), tokens, directory)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=60)
            except TimeoutError:
                process.kill()
                await process.wait()


def live(text: str, vault: DevVault) -> str:
    text = text.replace(README_ADDRESS, vault.address)
    for placeholder, role in PLACEHOLDERS.items():
        text = text.replace(placeholder, vault.tokens[role])
    return text


async def run_transcript(transcript: Transcript, vault: DevVault) -> list[str]:
    """Run every step in one bash session; return each step's output (stdout + stderr)."""
    for name, content in transcript.files.items():
        (vault.directory / name).write_text(live(content, vault), encoding="utf-8")
    script = ["exec 2>&1"]
    for number, step in enumerate(transcript.steps):
        script += [f"printf '%s\\n' '@@step {number}@@'", live(step.command, vault)]
    script.append("printf '%s\\n' '@@end@@'")
    process = await asyncio.create_subprocess_exec(
        "bash",
        "--noprofile",
        "--norc",
        "-s",
        cwd=vault.directory,
        env=clean_environment(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        out, _ = await asyncio.wait_for(
            process.communicate("\n".join(script).encode() + b"\n"), timeout=180
        )
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    text = out.decode()
    assert text.startswith("@@step 0@@\n") and text.endswith("@@end@@\n"), text
    parts = re.split(r"@@step \d+@@\n|@@end@@\n", text)[1:-1]
    assert len(parts) == len(transcript.steps), text
    return [part.rstrip("\n") for part in parts]


# -------------------------------------------------------------------------- tests


def test_the_section_parses_into_steps() -> None:
    transcript = parse_transcript(readme_section(README.read_text(encoding="utf-8")))
    commands = [step.command for step in transcript.steps]
    assert len(commands) >= 15
    assert any("vaultctl secrets create" in c for c in commands)
    assert "python example.py" in commands
    assert set(transcript.files) == {"tool.json", "typos.json", "pay.json", "example.py"}
    assert len(transcript.fragments) == 1
    # The volatile parts the masks exist for are really there (else they would mask nothing).
    shown = "\n".join(step.expected for step in transcript.steps)
    for pattern, _ in MASKS:
        assert pattern.search(shown), pattern.pattern


CREATED = "created secret a (etag 0123456789abcdef0123)"
ROW = "x  2026-11-28T05:53:29.884509Z  y"
AUDIT = "dev-admin  OK  8d76f85fdf704940992ca851d5e9b44b"


@pytest.mark.parametrize(
    ("original", "changed"),
    [
        (CREATED, "created secret a (etag 0123456789abcdef)"),
        (CREATED, "created secret a (etag 0123456789ABCDEF0123)"),
        (CREATED, "Created secret a (etag 0123456789abcdef0123)"),
        (ROW, "x  2026-11-28T05:53:29.884509Z   y"),
        (ROW, "x  2026-11-28T05:53:29Z  y"),
        (ROW, "x  2026-11-28 05:53:29.884509Z  y"),
        (AUDIT, "dev-admin  OK  8d76f85f-df70-4940-992c-a851d5e9b44b"),
        (AUDIT, "dev-admin  OK  "),
        (AUDIT, "dev-viewer  OK  8d76f85fdf704940992ca851d5e9b44b"),
        ("exit=4", "exit=1"),
        ('  "total_secrets": 1,', '  "total_secrets": 2,'),
    ],
)
def test_shape_comparison_is_tight(original: str, changed: str) -> None:
    assert shape(original) != shape(changed)


def test_shape_comparison_ignores_only_the_volatile_parts() -> None:
    first = (
        "2026-11-28T05:53:29.884509Z  etag 0123456789abcdef0123  8d76f85fdf704940992ca851d5e9b44b"
    )
    second = (
        "2030-01-02T03:04:05.000001Z  etag ffffffffffffffffffff  00000000000000000000000000000000"
    )
    assert shape(first) == shape(second) == "<time>  etag <etag>  <request-id>"


async def test_readme_transcript_runs_as_shown(tmp_path: Path) -> None:
    transcript = parse_transcript(readme_section(README.read_text(encoding="utf-8")))
    async with dev_vault(tmp_path) as vault:
        outputs = await run_transcript(transcript, vault)
        for number, fragment in enumerate(transcript.fragments):
            script = vault.directory / f"fragment_{number}.py"
            script.write_text(
                f"admin_token = {vault.tokens['admin']!r}\n" + live(fragment, vault),
                encoding="utf-8",
            )
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(script),
                cwd=vault.directory,
                env=clean_environment(),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
            assert (process.returncode, out.decode()) == (0, ""), f"fragment {number}"

    actual = render(transcript.steps, outputs)
    expected = render(transcript.steps, [step.expected for step in transcript.steps])
    assert shape(actual) == shape(expected), (
        f"README {SECTION!r} no longer matches what the vault prints; this run printed:\n{actual}"
    )
    for token in vault.tokens.values():
        assert token not in actual


# ------------------------------------------------------------------ regenerating


async def rewrite_readme() -> None:
    """Re-run the section for real and write what the vault printed into the README.

    For a deliberate change of output: `python -m tests.integration.test_readme_transcript`,
    then review the diff.
    """
    import tempfile

    text = README.read_text(encoding="utf-8")
    section = readme_section(text)
    transcript = parse_transcript(section)
    with tempfile.TemporaryDirectory() as directory:
        async with dev_vault(Path(directory)) as vault:
            outputs = iter(await run_transcript(transcript, vault))

    def block(match: re.Match[str]) -> str:
        steps = parse_console(match.group(1))
        return "```console\n" + render(steps, [next(outputs) for _ in steps]) + "```"

    new = re.sub(r"^```console\n(.*?)^```$", block, section, flags=re.DOTALL | re.MULTILINE)
    README.write_text(text.replace(section, new), encoding="utf-8")


if __name__ == "__main__":
    asyncio.run(rewrite_readme())
