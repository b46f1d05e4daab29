"""pcseg.process_group: entry points close the process group Lightning opened, on success
and on error, so no gloo thread is left to static destruction at exit."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from pcseg.process_group import close_process_group, closing_process_group, process_group_open
from tests.test_distributed import _free_port


def _open_single_process_group() -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
    )


def test_closing_without_a_process_group_is_a_no_op():
    assert not process_group_open()
    close_process_group()
    with closing_process_group():
        pass
    assert not process_group_open()


def test_the_group_is_closed_after_a_run_and_after_an_error():
    try:
        _open_single_process_group()
        with closing_process_group():
            assert process_group_open()
        assert not process_group_open()

        _open_single_process_group()
        with pytest.raises(ValueError, match="boom"), closing_process_group():
            raise ValueError("boom")
        assert not process_group_open()
    finally:
        if process_group_open():
            dist.destroy_process_group()
