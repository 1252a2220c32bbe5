"""The admin client talks to the admin API over HTTP(S) and nothing else."""

import pytest

from app.cli.commands import main
from app.control.client import AdminClient


@pytest.mark.parametrize("url", ["file:///etc/hosts", "ftp://example.com", "localhost:8080"])
def test_a_url_other_than_http_is_refused_before_any_request(url: str) -> None:
    # urllib would read a file: URL from the local disk and answer it as the API's reply.
    with pytest.raises(ValueError, match=r"must be http\(s\)://"):
        AdminClient(url, "token")


def test_the_cli_says_why_it_refuses_a_file_url(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["flags", "list", "--url", "file:///etc/hosts", "--env", "dev"])
    assert code != 0
    assert "must be http(s)://" in capsys.readouterr().err
