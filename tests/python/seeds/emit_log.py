#!/usr/bin/env python
"""Fanout publisher (seed tutorial: exchange 'logs')."""
import os
import sys

import pika

NS = os.environ.get("SEED_NS", "")
connection = pika.BlockingConnection(
    pika.URLParameters(os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")))
channel = connection.channel()

channel.exchange_declare(exchange=NS + 'logs', exchange_type='fanout')

message = ' '.join(sys.argv[1:]) or "info: Hello World!"
channel.basic_publish(exchange=NS + 'logs', routing_key='', body=message)
print(" [x] Sent %r" % message)
connection.close()
