#!/usr/bin/env python
"""Hello world consumer (seed tutorial, pika 1.3 API).

Env: AMQP_URL, SEED_NS, SEED_TIMEOUT (seconds before giving up, default 30),
SEED_COUNT (exit after this many messages, default: run until the timeout).
"""
import os

import pika

NS = os.environ.get("SEED_NS", "")
connection = pika.BlockingConnection(
    pika.URLParameters(os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")))
channel = connection.channel()

channel.queue_declare(queue=NS + 'hello')

count = int(os.environ.get("SEED_COUNT", "0"))
received = 0


def callback(ch, method, properties, body):
    global received
    print(" [x] Received %r" % body, flush=True)
    received += 1
    if count and received >= count:
        ch.stop_consuming()


channel.basic_consume(queue=NS + 'hello', on_message_callback=callback, auto_ack=True)
connection.call_later(float(os.environ.get("SEED_TIMEOUT", "30")), channel.stop_consuming)

print(' [*] Waiting for messages. To exit press CTRL+C', flush=True)
channel.start_consuming()
connection.close()
