"""The worker keeps the memory a batch frees for the next one (glibc's malloc)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hitl_router.agents import allocator

#: in a fresh interpreter, three times: 3,000 outputs of an accepted item's size made by
#: orjson (~25 MB resident: glibc's malloc serves them, not pymalloc) and freed; prints
#: the resident MB given back to the kernel each time
_CHILD = """
import os, sys
import orjson
from hitl_router.agents import allocator
if sys.argv[1] == "keep":
    assert allocator.keep_freed_memory()
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
for _ in range(3):
    outputs = [orjson.dumps({"id": i, "prediction": "x" * 1300}) for i in range(3000)]
    before = rss()
    del outputs
    print((before - rss()) / 1e6)
"""


def _given_back(mode: str) -> list[float]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, check=True
    )
    return [float(line) for line in out.stdout.split()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc, /proc")
def test_a_batch_s_freed_outputs_stay_in_the_process_for_the_next_one():
    if not allocator.keep_freed_memory():
        pytest.skip("not glibc")
    # glibc's defaults: most of it goes back to the kernel, to be faulted in again
    assert max(_given_back("default")) > 15
    # kept: nothing goes back, and the next batches reuse it
    assert max(_given_back("keep")) < 1
