"""Folders for personal data: every missing level gets the mode asked for, whatever the umask."""

import os
import stat

import pytest

from rpi2braze import private


@pytest.fixture
def open_umask():
    """Umask 0, so a mode seen on disk is the mode the code asked for, not one the umask hid."""
    previous = os.umask(0)
    yield
    os.umask(previous)


@pytest.mark.parametrize("mode", [0o700, 0o750])
def test_every_missing_folder_gets_the_mode_and_existing_ones_are_left_alone(tmp_path, open_umask, mode):
    (tmp_path / "existing").mkdir(mode=0o755)
    private.make_directories(str(tmp_path / "existing" / "a" / "b" / "c"), mode)
    modes = {name: stat.S_IMODE(os.stat(tmp_path / name).st_mode)
             for name in ("existing", "existing/a", "existing/a/b", "existing/a/b/c")}
    assert modes == {"existing": 0o755, "existing/a": mode, "existing/a/b": mode, "existing/a/b/c": mode}
    private.make_directories(str(tmp_path / "existing" / "a"), mode)   # there already: no error


def test_a_file_in_the_way_is_an_error_not_ignored(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        private.make_directories(str(tmp_path / "file" / "sub"))
