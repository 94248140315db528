#!/usr/bin/env python
"""Direct publisher: routing key = severity (seed tutorial: exchange 'direct_logs')."""
import os
import sys

import pika

NS = os.environ.get("SEED_NS", "")
connection = pika.BlockingConnection(
    pika.URLParameters(os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")))
channel = connection.channel()

channel.exchange_declare(exchange=NS + 'direct_logs', exchange_type='direct')

severity = sys.argv[1] if len(sys.argv) > 1 else 'info'
message = ' '.join(sys.argv[2:]) or 'Hello World!'
channel.basic_publish(exchange=NS + 'direct_logs', routing_key=severity, body=message)
print(" [x] Sent %r:%r" % (severity, message))
connection.close()
