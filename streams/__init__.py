"""Everything in siem-export that talks to Kafka.

The codec (Avro single-object encoding of audit events), the publisher used by platform
services, topic administration, the local development broker and, later, the delivery
engine. This package never imports aiohttp or anything that talks to a destination.
"""
