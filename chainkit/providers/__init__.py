"""Model providers: transports that complete a prompt and report usage."""

from chainkit.providers.model import Completion, Model, Prompt
from chainkit.providers.offline import OfflineModel, ScriptedModel

__all__ = ["Completion", "Model", "OfflineModel", "Prompt", "ScriptedModel"]
