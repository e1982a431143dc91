"""``workers = auto``: the CPUs this process may use (affinity within the cgroup quota)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import REPO_ROOT
from vaultsvc.config import ConfigError, load_settings
from vaultsvc.supervisor import available_cpus, cgroup_cpu_limit, cpu_quota_v1, cpu_quota_v2


def test_cpu_max_v2() -> None:
    assert cpu_quota_v2("150000 100000\n") == 1.5
    assert cpu_quota_v2("200000 100000") == 2.0
    assert cpu_quota_v2("max 100000\n") is None
    assert cpu_quota_v2("") is None


def test_cfs_quota_v1() -> None:
    assert cpu_quota_v1("50000\n", "100000\n") == 0.5
    assert cpu_quota_v1("-1\n", "100000\n") is None


def test_v2_tightest_limit_on_the_path_counts(tmp_path: Path) -> None:
    (tmp_path / "kubepods" / "pod1").mkdir(parents=True)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "kubepods" / "cpu.max").write_text("300000 100000\n")
    (tmp_path / "kubepods" / "pod1" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit("0::/kubepods/pod1\n", tmp_path) == 3.0
    assert cgroup_cpu_limit("0::/\n", tmp_path) is None


def test_v2_namespaced_path_falls_back_to_the_root(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert cgroup_cpu_limit("0::/not/visible/here\n", tmp_path) == 2.5


def test_v1_cpu_controller(tmp_path: Path) -> None:
    group = tmp_path / "cpu,cpuacct" / "docker" / "abc"
    group.mkdir(parents=True)
    (group / "cpu.cfs_quota_us").write_text("100000\n")
    (group / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    text = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n"
    assert cgroup_cpu_limit(text, tmp_path) == 1.0


def test_available_cpus_rounds_the_quota_down_and_keeps_one(tmp_path: Path) -> None:
    proc = tmp_path / "self-cgroup"
    proc.write_text("0::/\n")
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cpu.max").write_text("150000 100000\n")
    assert available_cpus(root, proc) == 1
    (root / "cpu.max").write_text("10000 100000\n")  # a tenth of a CPU: still one worker
    assert available_cpus(root, proc) == 1
    (root / "cpu.max").write_text("max 100000\n")
    assert available_cpus(root, proc) == len(os.sched_getaffinity(0))


def test_affinity_limits_auto_in_a_real_process() -> None:
    """``taskset -c 0``: one CPU usable, whatever the machine has."""
    code = "from vaultsvc.supervisor import worker_count; print(worker_count('auto'))"
    pinned = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=True,
    )
    assert pinned.stdout.strip() == "1"
    free = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60
    )
    assert int(free.stdout) == min(len(os.sched_getaffinity(0)), available_cpus())


@pytest.mark.parametrize(("text", "expected"), [("auto", "auto"), ("AUTO", "auto"), ("3", 3)])
def test_workers_setting(text: str, expected: object) -> None:
    assert load_settings(None, {"VAULT_WORKERS": text}).workers == expected
    assert load_settings(None, {}).workers == 1


@pytest.mark.parametrize("text", ["0", "-2", "two", "1.5"])
def test_workers_setting_refuses_bad_values(text: str) -> None:
    with pytest.raises(ConfigError, match="VAULT_WORKERS must be auto or an integer >= 1"):
        load_settings(None, {"VAULT_WORKERS": text})


def test_workers_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "vault.toml"
    path.write_text('workers = "auto"\n')
    assert load_settings(path, {}).workers == "auto"
    path.write_text("workers = 4\n")
    assert load_settings(path, {}).workers == 4
    path.write_text("workers = 0\n")
    with pytest.raises(ConfigError, match="workers must be auto or an integer >= 1"):
        load_settings(path, {})
