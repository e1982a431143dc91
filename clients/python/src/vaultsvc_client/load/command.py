"""``vaultctl load``: the command around the pieces (seed, run, report, clean up).

Signals: the first Ctrl-C (or SIGTERM) stops the load; in-flight calls are
dropped, the partial report is printed and seeded secrets are removed. While
seeded secrets are being removed, a second Ctrl-C only warns; a third
abandons them (their prefix is printed so they can be removed by hand).
Without seeded secrets, a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

from .options import (
    EXIT_CALLS_FAILED,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SETUP_FAILED,
    EXIT_USAGE,
    LoadOptions,
    LoadUsageError,
    configure_parser,
    exit_codes_epilog,
    options_from_args,
)
from .procs import ChildFailed, run_processes
from .progress import Progress
from .report import build_report, render_json, render_text
from .runner import ProcessRun, SetupError, jobs_for, open_channels
from .scenario import SEED_SCENARIO, RequestFactory, Scenario, load_template_file
from .seeding import SeededSecrets, Seeder, SeedError
from .stats import ProcessResult, Recorder

__all__ = ["add_load_parser", "build_parser", "main", "run_load"]

PROG = "vaultctl load"

DESCRIPTION = textwrap.fill(
    "Load-test ResolveTemplate, in the spirit of ghz: N workers over M connections "
    "(and P processes), for a duration or a number of calls, closed loop or open loop "
    "at a fixed rate (--rps, latency from each call's intended start). The report has "
    "the count, the rate, errors by status code and ErrorInfo reason, and latency "
    "percentiles from an HDR histogram. Calls use a resolver token (--token / "
    "VAULT_TOKEN); --seed-secrets uses an admin token to create throwaway secrets "
    "and removes them afterwards.",
    width=78,
)


def add_load_parser(subparsers: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> Any:
    """Adds ``load`` to vaultctl's subcommands; ``args.handler`` is :func:`run_load`.

    When ``parents`` is given (vaultctl's shared connection options), they are used
    instead of this package's own copy of the connection options.
    """
    parser = subparsers.add_parser(
        "load",
        help="load-test ResolveTemplate (ghz-style report, HDR latency)",
        description=DESCRIPTION,
        epilog=exit_codes_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=list(parents),
    )
    configure_parser(parser, connection_options=not parents)
    parser.set_defaults(handler=run_load)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The standalone parser of ``python -m vaultsvc_client.load``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=exit_codes_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    configure_parser(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    return run_load(args)


def run_load(args: argparse.Namespace) -> int:
    """Runs a load test from parsed arguments; returns the exit code (see EXIT_CODES)."""
    try:
        options = options_from_args(args)
        scenario = (
            load_template_file(options.template_file) if options.template_file else SEED_SCENARIO
        )
        _check_scenario(options, scenario)
    except LoadUsageError as exc:
        _error("usage", str(exc))
        return EXIT_USAGE
    try:
        return asyncio.run(_run(options, scenario))
    except KeyboardInterrupt:
        _error("interrupted", "cancelled by user")
        return EXIT_INTERRUPTED


def _check_scenario(options: LoadOptions, scenario: Scenario) -> None:
    if options.seed_secrets and not scenario.slots:
        raise LoadUsageError(
            f"the scenario {scenario.name} has no {{{{secret:$N}}}} slot, so the seeded "
            "secrets would go unused"
        )
    if options.secrets and not scenario.slots:
        raise LoadUsageError(f"the scenario {scenario.name} has no {{{{secret:$N}}}} slot")
    if scenario.slots and not (options.seed_secrets or options.secrets):
        raise LoadUsageError(
            f"the scenario {scenario.name} names {scenario.slots} secret(s) "
            "({{secret:$1}}...): give --seed-secrets N (with an admin token) or --secret NAME"
        )
    # Fails here, not in a worker, on a template the factory cannot fill.
    RequestFactory(scenario, options.secrets or ("x",), options.names, options.tool)


def _error(label: str, message: str) -> None:
    print(f"{PROG}: {label}: {' '.join(message.split())}", file=sys.stderr, flush=True)


class _Interrupts:
    """SIGINT/SIGTERM: first stops the load; then see the module docstring."""

    def __init__(self, progress: Progress) -> None:
        self.stop = asyncio.Event()
        self.count = 0
        self.cleaning: str | None = None
        self._progress = progress
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self._installed: list[int] = []
        for number in (signal.SIGINT, signal.SIGTERM):
            try:
                self._loop.add_signal_handler(number, self._on_signal)
            except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
                continue
            self._installed.append(number)

    @property
    def interrupted(self) -> bool:
        return self.count > 0

    def _on_signal(self) -> None:
        self.count += 1
        self.stop.set()
        if self.count == 1:
            return
        if self.cleaning is not None and self.count == 2:
            _error(
                "interrupted",
                f"removing the seeded secrets ({self.cleaning}*); interrupt once more to "
                "abandon them",
            )
            return
        if self._task is not None:
            self._task.cancel()

    def close(self) -> None:
        for number in self._installed:
            self._loop.remove_signal_handler(number)


async def _run(options: LoadOptions, scenario: Scenario) -> int:
    progress = Progress.for_stream(sys.stderr, options.progress)
    interrupts = _Interrupts(progress)
    seeder: Seeder | None = None
    seeded: SeededSecrets | None = None
    results: list[ProcessResult] = []
    failure: tuple[str, str, int] | None = None
    cleanup_failure: str | None = None
    admin_channels = open_channels(options, 1) if options.seed_secrets else []
    pool: tuple[str, ...] = options.secrets
    connections = 0
    try:
        try:
            if options.seed_secrets:
                assert options.admin_token is not None
                seeder = Seeder(
                    admin_channels[0], options.admin_token, options.timeout, progress.message
                )
                progress.message(f"seeding {options.seed_secrets} secrets")
                seeded = await _unless_stopped(
                    seeder.create(options.seed_secrets, options.value_size), interrupts.stop
                )
                if seeded is not None:
                    pool = tuple(seeded.names)
            if not interrupts.interrupted:
                jobs = jobs_for(options, scenario, pool)
                connections = sum(job.connections for job in jobs)
                results = await _load(options, jobs, interrupts.stop, progress)
        except SeedError as exc:
            failure = ("setup", f"seeding failed: {exc}", EXIT_SETUP_FAILED)
        except SetupError as exc:
            failure = ("setup", str(exc), EXIT_SETUP_FAILED)
        except ChildFailed as exc:
            failure = ("error", str(exc), EXIT_ERROR)
        finally:
            if seeder is not None and seeder.seeded is not None:
                interrupts.cleaning = seeder.seeded.prefix
                try:
                    seeded = await seeder.remove()
                except SeedError as exc:
                    cleanup_failure = str(exc)
                    seeded = seeder.seeded
            for channel in admin_channels:
                await channel.close(grace=None)
            progress.close()
    except asyncio.CancelledError:
        progress.close()
        prefix = seeder.seeded.prefix if seeder is not None and seeder.seeded else None
        if prefix is not None:
            _error("interrupted", f"abandoned the seeded secrets: remove {prefix}* by hand")
        else:
            _error("interrupted", "cancelled by user")
        return EXIT_INTERRUPTED
    finally:
        interrupts.close()

    if results:
        report = build_report(
            options,
            scenario,
            len(pool),
            results,
            interrupted=interrupts.interrupted,
            seeded=seeded,
            connections=connections,
        )
        render = render_json if options.output == "json" else render_text
        sys.stdout.write(render(report))
        sys.stdout.flush()
    if failure is not None:
        _error(failure[0], failure[1])
    if cleanup_failure is not None:
        _error("cleanup", cleanup_failure)
    if failure is not None:
        return failure[2]
    if cleanup_failure is not None:
        return EXIT_SETUP_FAILED
    if interrupts.interrupted:
        if not results:
            _error("interrupted", "stopped before the load started")
        return EXIT_INTERRUPTED
    return EXIT_CALLS_FAILED if any(r.failed for r in results) else EXIT_OK


async def _unless_stopped(work: Any, stop: asyncio.Event) -> Any:
    """Awaits ``work`` unless ``stop`` is set first (then cancels it; returns None)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, stopper, return_exceptions=True)
    if task.cancelled():
        return None
    return task.result()


async def _load(
    options: LoadOptions, jobs: list[Any], stop: asyncio.Event, progress: Progress
) -> list[ProcessResult]:
    def show(elapsed: float, ok: int, failed: int) -> None:
        progress.update(elapsed, ok, failed, options.rps)

    if len(jobs) > 1:
        return await run_processes(jobs, stop, show, progress.interval)

    run = ProcessRun(jobs[0])
    try:
        await run.setup()

        def tick(elapsed: float, recorder: Recorder) -> None:
            show(elapsed, recorder.ok, recorder.failed)

        return [await run.run(None, stop, tick if progress.enabled else None, progress.interval)]
    finally:
        await run.close()
