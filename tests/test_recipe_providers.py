from __future__ import annotations

import pytest

from chainkit import OfflineModel
from chainkit.providers.bedrock import BedrockModel
from recipes import chatbot
from recipes.common import make_model


def test_bedrock_provider_builds_real_bedrock_models_for_the_region() -> None:
    model = make_model("bedrock", chatbot.SMALL, "eu-central-1")
    assert isinstance(model, BedrockModel)
    assert (model.invoke_id, model.region) == (chatbot.SMALL, "eu-central-1")
    assert model.client.meta.region_name == "eu-central-1"


def test_offline_provider_is_the_default_stand_in() -> None:
    assert isinstance(make_model("offline", chatbot.STRONG), OfflineModel)


def test_seed_scenario_refuses_bedrock_with_a_reason(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        chatbot.main(["--scenario", "seed", "--provider", "bedrock"])
    assert info.value.code == 2
    assert "demo scenario" in capsys.readouterr().err
