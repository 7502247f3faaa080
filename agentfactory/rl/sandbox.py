"""A bubblewrap sandbox for model-written code (CodeEnv's hidden unit tests, code-execution tools).

Untrusted Python runs as `python3 -I -B` inside `bwrap` (Debian's bubblewrap) with every namespace
unshared, so the code sees:
- **no network**: `--unshare-net` leaves only a loopback device with nothing listening;
- **a read-only root** holding only `/usr` (and the `/bin`, `/lib*` links into it): no `/home`,
  `/root`, `/etc` or project files exist in the sandbox, so host secrets cannot be read; bwrap
  itself starts with a clean environment (its pid-1 environ is readable inside);
- **one writable work dir** `/work`: a size-limited tmpfs (plus small `/tmp`, `/dev/shm`) that vanishes
  with the sandbox; the inputs are bound into it read-only, so nothing reaches the host disk except
  the captured stdout/stderr, which are files capped by `RLIMIT_FSIZE`;
- **limits** set by `prlimit` on the sandboxed process tree: address space (memory), CPU seconds
  (SIGXCPU at the soft limit), processes (fork bombs hit EAGAIN), open files, file size; plus a
  wall-clock timeout enforced from outside, which kills the whole process group.

When run as root, the sandbox first drops to an unprivileged uid with `setpriv`: root is exempt
from RLIMIT_NPROC, and bwrap then uses an unprivileged user namespace. RLIMIT_NPROC counts all
processes of that uid, so concurrent sandboxes share the process cap (give each its own `uid`).

Every outcome is a `SandboxResult` with a status (ok / error / timeout / cpu_limit / killed /
sandbox_error), never an exception: a crashed or hostile program is data, as everywhere else.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from agentfactory.config import StrictModel

_CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
SandboxStatus = Literal["ok", "error", "timeout", "cpu_limit", "killed", "sandbox_error"]


class SandboxConfig(StrictModel):
    """Limits of one sandboxed run. Defaults suit small unit-test programs on a 2-core machine."""

    python: str = Field("/usr/bin/python3", description="interpreter inside the sandbox (under /usr)")
    wall_seconds: float = Field(10.0, gt=0, description="wall-clock limit, enforced from outside")
    cpu_seconds: int = Field(5, ge=1, description="CPU-time limit (SIGXCPU, then SIGKILL one second later)")
    memory_mb: int = Field(512, ge=32, description="address-space limit (RLIMIT_AS) of every process")
    max_processes: int = Field(32, ge=1, description="RLIMIT_NPROC for the sandbox uid (fork-bomb cap)")
    max_open_files: int = Field(64, ge=16)
    max_file_mb: int = Field(8, ge=1, description="largest file any process may write (RLIMIT_FSIZE)")
    work_mb: int = Field(32, ge=1, description="size of the writable /work tmpfs")
    tmp_mb: int = Field(16, ge=1, description="size of the /tmp tmpfs")
    output_bytes: int = Field(65536, ge=1024, description="stdout/stderr kept in the result (each)")
    uid: int = Field(65534, ge=1, description="uid the sandbox runs as when started by root (nobody)")
    extra_ro_binds: list[str] = Field(
        default_factory=list, description="extra host paths bound read-only at the same path"
    )


class SandboxResult(StrictModel):
    status: SandboxStatus
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    wall_seconds: float = 0.0
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def bwrap_available() -> bool:
    return shutil.which("bwrap") is not None and shutil.which("prlimit") is not None


def _bwrap_args(cfg: SandboxConfig, inputs: Path) -> list[str]:
    mb = 1 << 20
    args = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = Path("/") / name
        if host.is_symlink():  # merged-/usr systems: /bin -> usr/bin
            args += ["--symlink", os.readlink(host), f"/{name}"]
        elif host.is_dir():
            args += ["--ro-bind", str(host), f"/{name}"]
    for path in cfg.extra_ro_binds:
        args += ["--ro-bind", path, path]
    args += ["--proc", "/proc", "--dev", "/dev", "--size", str(mb), "--tmpfs", "/dev/shm"]
    args += ["--size", str(cfg.tmp_mb * mb), "--tmpfs", "/tmp"]
    args += ["--size", str(cfg.work_mb * mb), "--tmpfs", "/work"]
    args += ["--ro-bind", str(inputs), "/work/input", "--remount-ro", "/", "--chdir", "/work"]
    args += ["--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/work"]
    args += ["--setenv", "PYTHONDONTWRITEBYTECODE", "1", "--setenv", "PYTHONHASHSEED", "0"]
    return args


def _prlimit_args(cfg: SandboxConfig) -> list[str]:
    mb = 1 << 20
    return [
        "prlimit",
        f"--as={cfg.memory_mb * mb}",
        f"--cpu={cfg.cpu_seconds}:{cfg.cpu_seconds + 1}",
        f"--nproc={cfg.max_processes}",
        f"--nofile={cfg.max_open_files}",
        f"--fsize={cfg.max_file_mb * mb}",
        "--core=0",
        "--",
    ]


def _read_capped(path: Path, limit: int) -> str:
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError:
        return ""
    text = data[:limit].decode("utf-8", errors="replace")
    return text + ("\n[output truncated]" if len(data) > limit else "")


def _classify(rc: int, timed_out: bool, stderr: str) -> tuple[SandboxStatus, str]:
    if timed_out:
        return "timeout", "wall-clock limit reached; process group killed"
    if rc == 0:
        return "ok", ""
    if stderr.startswith(("bwrap:", "setpriv:", "prlimit:")):  # the sandbox could not be set up
        return "sandbox_error", stderr.strip().splitlines()[0]
    sig = rc - 128 if rc > 128 else -rc if rc < 0 else 0
    if sig == signal.SIGXCPU:
        return "cpu_limit", "CPU-time limit reached (SIGXCPU)"
    if sig == signal.SIGKILL:
        return "killed", "killed (SIGKILL: CPU hard limit or out of memory)"
    if sig == signal.SIGXFSZ:
        return "error", "file-size limit reached (SIGXFSZ)"
    if sig:
        return "error", f"terminated by signal {signal.Signals(sig).name}"
    if "MemoryError" in stderr:
        return "error", "memory limit reached (MemoryError)"
    return "error", f"exit status {rc}"


def run_in_sandbox(
    files: dict[str, str], argv: list[str], config: SandboxConfig | None = None, stdin: str = ""
) -> SandboxResult:
    """Run `python3 -I -B *argv` in /work with `files` readable under /work/input/; never raises.

    `files` maps names (no directories) to text. stdout/stderr come back capped at
    `config.output_bytes`; `stdin` is fed on standard input (e.g. a nonce the program must echo).
    """
    cfg = config or SandboxConfig()
    if not bwrap_available():
        return SandboxResult(status="sandbox_error", detail="bwrap or prlimit not installed")
    start = time.monotonic()
    host = Path(tempfile.mkdtemp(prefix="af-sandbox-"))
    try:
        inputs = host / "input"
        inputs.mkdir()
        for name, text in files.items():
            if "/" in name or name in ("", ".", ".."):
                return SandboxResult(status="sandbox_error", detail=f"bad input file name {name!r}")
            (inputs / name).write_text(text, encoding="utf-8")
        os.chmod(host, 0o755)
        os.chmod(inputs, 0o755)
        for p in inputs.iterdir():
            os.chmod(p, 0o644)
        drop = []
        if os.geteuid() == 0:  # root is exempt from RLIMIT_NPROC: run as an unprivileged uid
            drop = ["setpriv", f"--reuid={cfg.uid}", f"--regid={cfg.uid}", "--clear-groups", "--"]
        cmd = [*drop, *_bwrap_args(cfg, inputs), "--", *_prlimit_args(cfg), cfg.python, "-I", "-B", *argv]
        out_path, err_path = host / "stdout", host / "stderr"
        timed_out = False
        with out_path.open("wb") as out, err_path.open("wb") as err:
            # A clean environment for bwrap itself: its init process (pid 1 in the sandbox) keeps the
            # environment it was started with, readable in /proc/1/environ, so host variables
            # (tokens, keys) must never reach it.
            proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=out, stderr=err, start_new_session=True, env=_CLEAN_ENV
            )
            try:
                proc.communicate(stdin.encode(), timeout=cfg.wall_seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
            except BaseException:
                _kill_group(proc)
                raise
        stdout = _read_capped(out_path, cfg.output_bytes)
        stderr = _read_capped(err_path, cfg.output_bytes)
        status, detail = _classify(proc.returncode, timed_out, stderr)
        return SandboxResult(
            status=status,
            returncode=None if timed_out else proc.returncode,
            stdout=stdout,
            stderr=stderr,
            wall_seconds=time.monotonic() - start,
            detail=detail,
        )
    except OSError as e:
        return SandboxResult(status="sandbox_error", detail=f"could not start the sandbox: {e}")
    finally:
        shutil.rmtree(host, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the sandbox's session; bwrap's --die-with-parent and the pid namespace take the rest."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
