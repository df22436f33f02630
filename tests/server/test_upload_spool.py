"""The upload spool keeps what a tenant uploaded readable by the server's user only."""

import stat

from luodi.server.uploads import UploadSpool


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_spooled_uploads_are_private(tmp_path):
    root = tmp_path / "uploads"
    spool = UploadSpool(root)
    try:
        with spool.holding("salaries.txt", b"alice 9000") as path:
            assert path.read_bytes() == b"alice 9000"
            assert _mode(path) == 0o600
            assert [_mode(p) for p in (path.parent, path.parent.parent, root)] == [0o700] * 3
        assert not path.exists()
    finally:
        spool.close()
