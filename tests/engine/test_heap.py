"""The C heap keeps freed large arrays' pages for the next ones (glibc), unless the user tuned it."""

import subprocess
import sys

import pytest

CHECK = """
import time, numpy as np
from napari_segsuite.inference import pick_device
pick_device("cpu")
from napari_segsuite import heap
print(heap.reuse_freed_memory())
"""


def _run(env_extra: dict[str, str]) -> str:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "SEGSUITE_MALLOC"))}
    done = subprocess.run([sys.executable, "-c", CHECK], env={**env, **env_extra}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_every_run_keeps_freed_pages_unless_the_user_tuned_the_allocator():
    assert _run({}) == "True"
    assert _run({"MALLOC_MMAP_THRESHOLD_": "65536"}) == "False"  # the user's setting stands
    assert _run({"MALLOC_ARENA_MAX": "4"}) == "False"  # any of glibc's MALLOC_* variables
    assert _run({"SEGSUITE_MALLOC": "system"}) == "False"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_large_array_freed_and_made_again_faults_no_new_pages():
    code = """
import resource, numpy as np
from napari_segsuite.heap import reuse_freed_memory
reuse_freed_memory()
a = np.ones(64 << 20, np.uint8); del a  # 64 MiB: above glibc's largest mmap threshold
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    a = np.ones(64 << 20, np.uint8); del a
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(done.stdout.strip()) < 100  # glibc as it comes: thousands (2720 here), the pages fresh each time
