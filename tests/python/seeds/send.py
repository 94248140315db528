#!/usr/bin/env python
"""Hello world producer (seed tutorial, pika 1.3 API).

Env: AMQP_URL (default amqp://guest:guest@localhost:5672/), SEED_NS (prefix for
queue/exchange names, so runs do not collide).
"""
import os

import pika

NS = os.environ.get("SEED_NS", "")
connection = pika.BlockingConnection(
    pika.URLParameters(os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")))
channel = connection.channel()

channel.queue_declare(queue=NS + 'hello')

channel.basic_publish(exchange='', routing_key=NS + 'hello', body='Hello World!')
print(" [x] Sent 'Hello World!'")
connection.close()
