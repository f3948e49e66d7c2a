"""Everything in siem-export that talks to the outside world.

One sub-package per delivery method, the REST API, settings, metrics and the command line.
This package never imports confluent_kafka: it gets decoded events from ``streams``.
"""
