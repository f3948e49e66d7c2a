"""The delivery engine: a consumer-group runner that commits only acknowledged work.

``Engine`` owns Kafka; a connector provides a ``Sink`` and receives ``Envelope``s of one
tenant at a time, in partition order. See ``runner.py`` for the commit order and
``lanes.py`` for the lane and commit-metadata rules.
"""

from streams.engine.config import EngineConfig
from streams.engine.runner import Engine, EngineHealth
from streams.engine.sink import Envelope, SendResult, Sink

__all__ = ["Engine", "EngineConfig", "EngineHealth", "Envelope", "SendResult", "Sink"]
