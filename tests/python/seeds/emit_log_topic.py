#!/usr/bin/env python
"""Topic publisher: routing key <facility>.<severity> (seed tutorial: exchange
'topic_logs')."""
import os
import sys

import pika

NS = os.environ.get("SEED_NS", "")
connection = pika.BlockingConnection(
    pika.URLParameters(os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")))
channel = connection.channel()

channel.exchange_declare(exchange=NS + 'topic_logs', exchange_type='topic')

routing_key = sys.argv[1] if len(sys.argv) > 1 else 'anonymous.info'
message = ' '.join(sys.argv[2:]) or 'Hello World!'
channel.basic_publish(exchange=NS + 'topic_logs', routing_key=routing_key, body=message)
print(" [x] Sent %r:%r" % (routing_key, message))
connection.close()
