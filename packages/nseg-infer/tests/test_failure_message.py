"""One rule turns an exception into the message a user reads about a file: the file runner, the cluster and
the folder watch's settle check all use `failure_message`."""

import errno
from pathlib import Path

from nseg_data.atomic import WriteFailed
from nseg_data.errors import DataError

from nseg_infer.runners import cluster, files, settle
from nseg_infer.runners.inputs import failure_message

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
    for module in (files, cluster, settle):
        assert module.failure_message is failure_message


def test_settle_reports_an_undecodable_file_by_the_rule(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"not a png")
    shape, why = settle.check_decodes(bad)
    assert shape is None and str(bad) in why
