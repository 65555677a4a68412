"""One rule turns an exception into the message a user reads about a file (`failure_message`) and
into a file's failed result (`failed`): the file runner, the cluster and the folder watch all use
them, and the settle check uses the message."""

import errno
from pathlib import Path

from nseg_data.atomic import WriteFailed
from nseg_data.errors import DataError

from nseg_infer.runners import files
from nseg_infer.runners.cluster import client as cluster
from nseg_infer.runners.file_config import FileConfig
from nseg_infer.runners.inputs import failed, failure_message
from nseg_infer.runners.watch import settle
from nseg_infer.runners.watch import watcher as watch

P = Path("in/a.tif")


def test_an_error_that_names_the_file_is_kept_as_it_is():
    e = DataError(P, "truncated")
    assert failure_message(P, e) == str(e)


def test_a_failed_write_names_the_input_then_the_output_and_the_os_reason():
    e = WriteFailed(Path("out/a.labels.tif"), OSError(errno.ENOSPC, "No space left on device"))
    assert failure_message(P, e) == "in/a.tif: out/a.labels.tif: not written: No space left on device (ENOSPC)"


def test_any_other_error_gets_the_file_and_its_type():
    assert failure_message(P, ValueError("bad")) == "in/a.tif: ValueError: bad"


def test_every_runner_uses_the_one_rule():
    for module in (files, cluster, watch):
        assert module.failed is failed
    assert settle.failure_message is failure_message


def test_only_an_output_not_written_is_an_output_fault():
    full = failed(P, WriteFailed(Path("out/a.csv"), OSError(errno.ENOSPC, "No space left on device")), 1.0, 2, 3, "cpu")
    assert full.output_errno == errno.ENOSPC and full.error.startswith("in/a.tif: out/a.csv: not written")
    assert (full.height, full.width, full.backend) == (2, 3, "cpu") and not full.ok
    unreadable = failed(P, OSError(errno.EIO, "Input/output error"), 0.0, 0, 0, "")
    assert unreadable.output_errno is None and unreadable.error == "in/a.tif: OSError: [Errno 5] Input/output error"


def test_settle_reports_an_undecodable_file_by_the_rule(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"not a png")
    shape, why = settle.check_decodes(bad, FileConfig().open)
    assert shape is None and str(bad) in why
