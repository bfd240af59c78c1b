"""busflow on RabbitMQ: ``RabbitMQTransport``, and ``DeadLetterQueue`` for operators.

``pip install "busflow[rabbitmq]"``. For an endpoint whose queue is ``orders-service``,
under the prefix ``busflow``, a transport declares:

- ``busflow.<message name>``: a durable fanout exchange per message name; ``send`` and
  ``publish`` go there, and every endpoint that handles the message binds its queue to it;
- ``orders-service``: the endpoint's durable queue (a quorum queue where the server has
  them), shared by every process of the endpoint;
- ``orders-service.retry-10ms`` ... ``orders-service.retry-5min``: a queue per retry delay,
  whose messages expire back into the endpoint queue;
- ``orders-service.dead-letter``: messages that failed for good, with why in their headers;
- with ``partitions=N``, ``orders-service.partitions`` and ``orders-service.partition-0`` ...:
  messages go to a partition by their ``Message.partition_by``, one process at a time.
"""

try:
    import aio_pika  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the installation
    raise ImportError('busflow.rabbitmq needs aio-pika: pip install "busflow[rabbitmq]"') from error

from busflow._uri import hosts_of, mask_password, redact_uri
from busflow.rabbitmq._dead_letters import DeadLetterQueue
from busflow.rabbitmq._errors import (
    RabbitMQConnectionError,
    RabbitMQError,
    RabbitMQTopologyError,
    UnroutableMessageError,
)
from busflow.rabbitmq._topology import DEFAULT_RETRY_DELAYS, QueueType
from busflow.rabbitmq._transport import RabbitMQTransport

__all__ = [
    "DEFAULT_RETRY_DELAYS",
    "DeadLetterQueue",
    "QueueType",
    "RabbitMQConnectionError",
    "RabbitMQError",
    "RabbitMQTopologyError",
    "RabbitMQTransport",
    "UnroutableMessageError",
    "hosts_of",
    "mask_password",
    "redact_uri",
]

for _name in ("DeadLetterQueue", "RabbitMQTransport", *(n for n in __all__ if "Error" in n)):
    globals()[_name].__module__ = "busflow.rabbitmq"
del _name
