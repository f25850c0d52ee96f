"""Provider fixtures: recorded Bedrock replies, served through botocore's real parser."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse

BEDROCK_DATA = Path(__file__).resolve().parents[1] / "data" / "bedrock"


@pytest.fixture
def bedrock_reply() -> Any:
    """Load a recorded Bedrock reply from tests/data/bedrock by name."""

    def load(name: str) -> Any:
        return json.loads((BEDROCK_DATA / f"{name}.json").read_text())

    return load


@pytest.fixture
def serve() -> Any:
    """Answer one operation of a client with a fixed HTTP response, through botocore's parser.

    moto's fence answers every request of a client it sees; for this one client and operation,
    the recorded response is served instead (so nothing leaves the machine either way).
    """
    from moto.core.models import botocore_stubber

    def install(client: Any, operation: str, response: AWSResponse) -> None:
        client.meta.events.unregister("before-send", botocore_stubber)
        client.meta.events.register_first(
            f"before-send.bedrock-runtime.{operation}", lambda request, **_: response
        )

    return install
