#!/usr/bin/env python
"""Fanout subscriber with an exclusive server-named queue (seed tutorial).

Env: AMQP_URL, SEED_NS, SEED_TIMEOUT, SEED_COUNT.
"""
import os

import pika

NS = os.environ.get("SEED_NS", "")
connection = pika.BlockingConnection(
    pika.URLParameters(os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")))
channel = connection.channel()

channel.exchange_declare(exchange=NS + 'logs', exchange_type='fanout')

result = channel.queue_declare(queue='', exclusive=True)
queue_name = result.method.queue

channel.queue_bind(exchange=NS + 'logs', queue=queue_name)

print(' [*] Waiting for logs. To exit press CTRL+C', flush=True)

count = int(os.environ.get("SEED_COUNT", "0"))
received = 0


def callback(ch, method, properties, body):
    global received
    print(" [x] %r" % body, flush=True)
    received += 1
    if count and received >= count:
        ch.stop_consuming()


channel.basic_consume(queue=queue_name, on_message_callback=callback, auto_ack=True)
connection.call_later(float(os.environ.get("SEED_TIMEOUT", "30")), channel.stop_consuming)

channel.start_consuming()
connection.close()
