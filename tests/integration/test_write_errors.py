"""A read-only output directory, for real: a read-only tmpfs mounted in a private mount namespace.

Root ignores mode bits, so chmod cannot make a directory read-only for these tests; a read-only
mount can (EROFS). `unshare -m` gives the CLI processes their own mount table, so nothing outside
them sees the mount. Skipped where mount namespaces are not allowed (the unit tests cover the
same check with a file in the way and with a simulated EACCES).
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CLI = str(Path(sys.executable).parent / "agentfactory")


def _in_read_only_mount(mount: Path, *commands: str) -> subprocess.CompletedProcess:
    script = f"mount -t tmpfs -o ro tmpfs {mount} || exit 99\n" + "\n".join(
        f"{c}; echo rc=$?" for c in commands
    )
    return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_synth_and_train_on_a_read_only_mount_fail_with_one_line(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    r = _in_read_only_mount(
        ro,
        f"{CLI} synth run pipelines/tool_sft.yaml --set output_dir={ro}",
        f"{CLI} train sft pipelines/k2_1t_cluster.yaml --set output_dir={ro}/sft",
    )
    if r.returncode == 99 or "rc=" not in r.stdout:
        pytest.skip(f"cannot mount in a private namespace here: {r.stderr.strip()[:200]}")
    assert r.stdout.split() == ["rc=1", "rc=1"], r.stdout + r.stderr
    assert r.stderr.splitlines() == [
        f"{ro}/tool_sft/synth: not writable (Read-only file system)",
        f"sft failed: {ro}/sft: not writable (Read-only file system)",
    ], r.stderr
