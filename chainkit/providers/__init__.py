"""Model providers: transports that complete a prompt and report usage."""

from chainkit.providers.model import Chunk, Completion, Model, Prompt
from chainkit.providers.offline import OfflineModel, ScriptedModel

__all__ = ["Chunk", "Completion", "Model", "OfflineModel", "Prompt", "ScriptedModel"]
