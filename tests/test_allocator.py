"""The allocator setting that keeps training's freed buffers in the heap (hypermaml/allocator.py)."""

import subprocess
import sys
import textwrap

import pytest

# Run in a fresh interpreter: the setting is process-wide and must be observed from its default.
PROBE = textwrap.dedent("""
    import ctypes, torch
    from hypermaml.allocator import keep_heap_warm

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2

    def mmapped_bytes_while_holding(n_bytes):
        buffer = torch.empty(n_bytes, dtype=torch.uint8)
        held = libc.mallinfo2().hblkhd
        del buffer
        return held

    before = mmapped_bytes_while_holding(64 << 20)
    applied = keep_heap_warm()
    after = mmapped_bytes_while_holding(64 << 20)
    print(applied, before, after)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator is a Linux matter")
def test_large_buffers_stay_in_the_heap_once_the_setting_is_applied():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout.split()
    applied, before, after = out[0] == "True", int(out[1]), int(out[2])
    assert applied
    # By default glibc serves a 64 MiB buffer with a mmap of its own (returned to the kernel when
    # freed); afterwards from the heap, which it keeps for the next step.
    assert before - after >= 64 << 20
